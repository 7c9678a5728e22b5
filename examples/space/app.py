"""Hugging Face Space entry point: the same Gradio app as ``bigmoe-fas demo-app``.

Set the Space variable ``BIGMOE_MODEL`` to a model repo id (``owner/name``, saved with ``save_pretrained`` plus
its ``preprocessor_config.json``); without it an untrained tiny BIG-MoE is served so that the page still works.
Spaces run ``python app.py`` and expect the server on 0.0.0.0:7860 (``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT`` override); run locally it listens on 127.0.0.1 only.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from modeling_bigmoe.demo_app import build_demo, launch_demo, load_demo_model, tiny_demo_model

MODEL = os.environ.get("BIGMOE_MODEL")
if MODEL:
    model, processor = load_demo_model(MODEL)
    NOTE = f"Checkpoint [`{MODEL}`](https://huggingface.co/{MODEL})."
else:
    model, processor = tiny_demo_model()
    NOTE = "No `BIGMOE_MODEL` set: an untrained tiny model is served, so the scores are meaningless."

demo = build_demo(model, processor, note=NOTE)

if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    launch_demo(demo, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
                port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
