"""Gradio demo app: score a capture (RGB + optional Depth / IR) and show what the model sees.

``bigmoe-fas demo-app --model PATH_OR_REPO`` (:func:`add_demo_app_parser`) serves on 127.0.0.1 (no share
link, analytics off). The page takes an RGB image and optional Depth / IR images, or an example rendered by
the embedded synthetic benchmark for each attack type, and shows the live score, the decision at the
checkpoint's ``config.decision_threshold``, the modalities used, the inputs as the model sees them and, for
BIG-MoE, the per-block routing / prompt maps of :mod:`modeling_bigmoe.visualization` (the Soft MoE slot maps
for La-SoftMoE CLIP, the alignment levels for MMDA).
``examples/space/app.py`` runs the same app as a Hugging Face Space.

Bad input never stops the server: a non-image upload, an image too small / too large / of a mode the image
processor does not read, Depth or IR sizes that differ from RGB, or Depth / IR without RGB give a message on
the page. Gradio is an optional dependency (``pip install modeling_bigmoe[demo]``); the analysis functions
here (:func:`analyse_capture`, :func:`load_upload`, :func:`example_capture`) do not need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEMO_MAX_SIDE",
    "DEMO_MIN_SIDE",
    "EXAMPLE_KINDS",
    "AnalysisResult",
    "add_demo_app_parser",
    "analyse_capture",
    "build_demo",
    "example_capture",
    "launch_demo",
    "load_demo_model",
    "load_upload",
    "run_demo_app",
    "tiny_demo_model",
]

DEMO_MIN_SIDE = 16
DEMO_MAX_SIDE = 4096
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _example_kinds() -> tuple[str, ...]:
    from .synthetic import ATTACK_TYPES

    return ("live",) + tuple(ATTACK_TYPES)


EXAMPLE_KINDS = _example_kinds()
"""``"live"`` and every attack type of the synthetic benchmark (the example picker's choices)."""


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------


def load_demo_model(path_or_repo: str | os.PathLike):
    """``(model, processor)`` from a saved model folder or a Hub repo id (any of the package's model types).

    Raises ``FileNotFoundError`` for a local-looking path that does not exist and ``ValueError`` when the
    folder or repo holds no loadable model.
    """
    from .cli import load_fas_model

    text = os.fspath(path_or_repo)
    if not text:
        raise ValueError("demo-app: --model is empty")
    if not Path(text).exists() and not _REPO_ID.match(text):
        raise FileNotFoundError(f"demo-app: model path {text!r} does not exist (and is not a Hub repo id "
                                "'owner/name')")
    try:
        return load_fas_model(text)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"demo-app: cannot load a model from {text!r}: {err}") from err


def tiny_demo_model(seed: int = 0):
    """An *untrained* tiny BIG-MoE and its processor (32 px), for trying the app without a checkpoint."""
    from .hub_configs import tiny_config
    from .image_processing_bigmoe import BigMoeImageProcessor
    from .modeling_bigmoe import BigMoeForFaceAntiSpoofing

    torch.manual_seed(seed)
    model = BigMoeForFaceAntiSpoofing(tiny_config()).eval()
    return model, BigMoeImageProcessor(size=model.config.vision_config.image_size)


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def load_upload(path: str | os.PathLike | None, modality: str) -> Image.Image | None:
    """Open an uploaded file as a PIL image (fully decoded); ``None`` passes through.

    Raises ``ValueError`` naming the modality and file for a file that is not an image or whose sides are
    outside [DEMO_MIN_SIDE, DEMO_MAX_SIDE] pixels, ``FileNotFoundError`` for a missing file.
    """
    if path is None or path == "":
        return None
    path = os.fspath(path)
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{modality}: file {name!r} not found")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max(width, height) > DEMO_MAX_SIDE:
                raise ValueError(f"{modality}: {name} is {width}x{height} px; the demo takes images up to "
                                 f"{DEMO_MAX_SIDE} px per side")
            image.load()
            loaded = image.copy()
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"{modality}: {name} is not an image file PIL can read ({err})") from err
    if min(loaded.size) < DEMO_MIN_SIDE:
        raise ValueError(f"{modality}: {name} is {loaded.size[0]}x{loaded.size[1]} px; the demo needs at least "
                         f"{DEMO_MIN_SIDE} px per side")
    return loaded


@dataclasses.dataclass
class AnalysisResult:
    """What the page shows for one capture.

    ``ok`` is False when the input was refused; ``message`` then says why (and the other fields are empty).
    ``inputs_image`` / ``routing_image`` are (H, W, 3) uint8 figures.
    """

    ok: bool
    message: str
    live_score: float | None = None
    threshold: float | None = None
    decision: str | None = None
    modalities: list[str] = dataclasses.field(default_factory=list)
    inputs_image: np.ndarray | None = None
    routing_image: np.ndarray | None = None
    summary: dict[str, Any] | None = None


_MODEL_LOCK = threading.Lock()


def analyse_capture(model, processor, rgb=None, depth=None, ir=None, *, attentions: bool = False) -> AnalysisResult:
    """Validate uploaded files (paths; Depth / IR optional) and score them; never raises on bad input.

    Also renders the inputs and :func:`~modeling_bigmoe.visualization.render_routing` (BIG-MoE routing /
    prompt maps, CLS attention with ``attentions``; La-SoftMoE slot maps; MMDA alignment levels).
    """
    from .visualization import explain_capture, render_inputs, render_routing

    try:
        if rgb is None or rgb == "":
            given = [name for name, value in (("Depth", depth), ("IR", ir)) if value]
            if given:
                raise ValueError(f"{' and '.join(given)} given without RGB: the model reads Depth / IR only "
                                 "next to an RGB image; upload the RGB image too")
            raise ValueError("no image: upload an RGB image (Depth and IR are optional)")
        images = {"rgb": load_upload(rgb, "RGB"), "depth": load_upload(depth, "Depth"), "ir": load_upload(ir, "IR")}
        reference = images["rgb"].size
        for name in ("depth", "ir"):
            image = images[name]
            if image is not None and image.size != reference:
                raise ValueError(f"{name.upper() if name == 'ir' else name.capitalize()} is {image.size[0]}x"
                                 f"{image.size[1]} px but RGB is {reference[0]}x{reference[1]} px: the three "
                                 "images must be aligned captures of the same size")
        with _MODEL_LOCK:
            explanation = explain_capture(model, processor, images["rgb"], images["depth"], images["ir"],
                                          attentions=attentions)
            figures = (render_inputs(explanation), render_routing(explanation))
    except (ValueError, FileNotFoundError) as err:
        return AnalysisResult(ok=False, message=f"Input refused: {err}")
    score, used = float(explanation.live_scores[0]), explanation.modalities[0]
    ignored = [name for name in ("depth", "ir") if images[name] is not None and name not in used]
    note = f" ({' and '.join(ignored)} ignored: this model reads RGB only)" if ignored else ""
    return AnalysisResult(ok=True, message=f"Scored {'+'.join(used)}{note}.", live_score=score,
                          threshold=explanation.threshold, decision="live" if explanation.is_live() else "spoof",
                          modalities=used, inputs_image=figures[0], routing_image=figures[1],
                          summary=explanation.summary())


def example_capture(kind: str, folder: str | os.PathLike, *, domain: str = "C", size: int = 64,
                    seed: int = 0) -> dict[str, str]:
    """Render one synthetic capture of ``kind`` (``"live"`` or an attack type) and write
    ``{kind}_rgb.png``, ``{kind}_depth.png``, ``{kind}_ir.png`` into ``folder``; returns the three paths."""
    from .synthetic import DOMAIN_PROFILES, generate_domain
    from .visualization import atomic_write

    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"example_capture: kind must be one of {list(EXAMPLE_KINDS)}, got {kind!r}")
    if domain not in DOMAIN_PROFILES:
        raise ValueError(f"example_capture: domain must be one of {sorted(DOMAIN_PROFILES)}, got {domain!r}")
    profile = DOMAIN_PROFILES[domain]
    profile = (dataclasses.replace(profile, live_frac=1.0) if kind == "live"
               else dataclasses.replace(profile, live_frac=0.0, attacks={kind: 1.0}))
    data = generate_domain(profile, 1, size=size, seed=seed, num_workers=1)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for modality in ("rgb", "depth", "ir"):
        image = Image.fromarray(data[modality][0])
        path = atomic_write(folder / f"{kind}_{modality}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
        paths[modality] = str(path)
    return paths


# ----------------------------------------------------------------------------------------------
# the Gradio app
# ----------------------------------------------------------------------------------------------


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError as err:
        raise ValueError("demo-app needs Gradio: pip install 'modeling_bigmoe[demo]'") from err
    return gr


def build_demo(model, processor, *, title: str = "BIG-MoE face anti-spoofing", note: str = "",
               examples_dir: str | os.PathLike | None = None):
    """The ``gradio.Blocks`` app for ``model`` / ``processor`` (see the module docstring).

    Element ids (for tests and styling): ``rgb-file``, ``depth-file``, ``ir-file``, ``analyse``,
    ``example-kind``, ``load-example``, ``live-score``, ``decision``, ``modalities``, ``message``,
    ``inputs-figure``, ``routing-figure``. Examples are rendered on first use into ``examples_dir``
    (default: a new temporary folder).
    """
    gr = _import_gradio()
    examples_dir = Path(examples_dir) if examples_dir is not None else Path(tempfile.mkdtemp(prefix="bigmoe-demo-"))
    threshold = float(getattr(model.config, "decision_threshold", 0.5))
    model_type = getattr(model.config, "model_type", "?")

    def analyse(rgb, depth, ir):
        result = analyse_capture(model, processor, rgb, depth, ir)
        if not result.ok:
            return "", "", "", result.message, None, None
        return (f"{result.live_score:.4f}", f"{result.decision} (threshold {result.threshold:.4f})",
                ", ".join(result.modalities), result.message, result.inputs_image, result.routing_image)

    def load_example(kind):
        try:
            paths = example_capture(kind, examples_dir)
        except ValueError as err:
            return None, None, None, f"Example refused: {err}"
        return paths["rgb"], paths["depth"], paths["ir"], f"Loaded the synthetic '{kind}' example (domain C)."

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nModel type `{model_type}`, decision threshold **{threshold:.4f}** "
                    f"(live if score >= threshold). {note}")
        with gr.Row():
            rgb = gr.File(label="RGB image (required)", type="filepath", elem_id="rgb-file")
            depth = gr.File(label="Depth image (optional)", type="filepath", elem_id="depth-file")
            ir = gr.File(label="IR image (optional)", type="filepath", elem_id="ir-file")
        with gr.Row():
            kind = gr.Dropdown(choices=list(EXAMPLE_KINDS), value="live", label="synthetic example (attack type)",
                               elem_id="example-kind")
            load = gr.Button("Load example", elem_id="load-example")
            run = gr.Button("Analyse", variant="primary", elem_id="analyse")
        with gr.Row():
            score = gr.Textbox(label="live score", interactive=False, elem_id="live-score")
            decision = gr.Textbox(label="decision", interactive=False, elem_id="decision")
            used = gr.Textbox(label="modalities used", interactive=False, elem_id="modalities")
        message = gr.Markdown("Upload an RGB image (and optionally Depth / IR), then press Analyse.",
                              elem_id="message")
        inputs_figure = gr.Image(label="inputs as the model sees them", interactive=False, elem_id="inputs-figure")
        routing_label = {"bigmoe": "per block: gate top score, top-expert cluster, prompt magnitude",
                         "la_softmoe": "per Soft MoE block: top expert, its combine share, slot read mass",
                         "mmda": "alignment levels: live probability"}.get(model_type, "model internals")
        routing_figure = gr.Image(label=routing_label, interactive=False, elem_id="routing-figure")
        outputs = [score, decision, used, message, inputs_figure, routing_figure]
        run.click(analyse, inputs=[rgb, depth, ir], outputs=outputs)
        load.click(load_example, inputs=[kind], outputs=[rgb, depth, ir, message]).then(
            analyse, inputs=[rgb, depth, ir], outputs=outputs)
    demo.bigmoe_examples_dir = str(examples_dir)
    return demo


def launch_demo(demo, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve ``demo`` on ``host:port`` (no share link, no server-side rendering, system fonts); returns the
    local URL. ``block=False`` returns at once (the server runs in a thread; ``demo.close()`` stops it)."""
    gr = _import_gradio()
    theme = gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                            quiet=True, ssr_mode=False, theme=theme, footer_links=[],
                            allowed_paths=[getattr(demo, "bigmoe_examples_dir", tempfile.gettempdir())])
    return url


def run_demo_app(args: argparse.Namespace) -> int:
    """The ``demo-app`` subcommand: load the model, build the app and serve it until interrupted."""
    if args.model is None:
        model, processor = tiny_demo_model()
        note = "Untrained tiny model (no --model given): the scores are meaningless."
    else:
        model, processor = load_demo_model(args.model)
        note = f"Checkpoint `{args.model}`."
    demo = build_demo(model, processor, note=note)
    print(f"bigmoe-fas demo-app: serving {args.model or 'the untrained tiny model'} on http://{args.host}:{args.port}"
          " (Ctrl+C stops)")
    try:
        launch_demo(demo, host=args.host, port=args.port, block=True)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


def add_demo_app_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``demo-app --model PATH_OR_REPO [--host] [--port]`` to an argparse ``subparsers``; returns it."""
    parser = subparsers.add_parser(
        "demo-app", help="serve the Gradio demo (upload RGB + optional Depth / IR, see score and routing maps)",
        description="Serve the Gradio demo app on 127.0.0.1 (needs the [demo] extra). Without --model an "
                    "untrained tiny model is used.")
    parser.add_argument("--model", default=None, help="saved model folder or Hub repo id (owner/name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.set_defaults(func=run_demo_app)
    return parser
