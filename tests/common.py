"""A small ``ModelTesterMixin`` (transformers keeps its own in its repository, not in the wheel).

A test class mixes :class:`ModelTesterMixin` into ``unittest.TestCase`` and sets ``all_model_classes``
and ``model_tester`` (an object with ``get_config(**overrides)`` and ``prepare_inputs(batch_size)``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, module_name: str):
    """Import a script of the repository (``benchmarks/…``, ``examples/…``) that is not a package module; it is
    registered in ``sys.modules`` under ``module_name`` (dataclasses defined in it need that)."""
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def clone_inputs(inputs: dict) -> dict:
    """Deep copies of the tensors in ``inputs``."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def assert_inputs_unchanged(test, before: dict, after: dict) -> None:
    """Every tensor in ``after`` is bit-identical to its copy in ``before``."""
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True,
                                       msg=f"input {key} was modified in place")


class ModelTesterMixin:
    """Generic checks for every model class in ``all_model_classes``."""

    all_model_classes: tuple = ()
    model_tester = None
    # fields whose change must make the config invalid: (field, bad value)
    invalid_config_values: tuple = ()

    def _logits(self, model, inputs):
        out = model(**inputs)
        return out.logits if hasattr(out, "logits") and out.logits is not None else out.pooler_output

    def _loss(self, model, inputs):
        batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
        if hasattr(model, "classifier"):
            return model(**inputs, labels=torch.arange(batch) % 2).loss
        return model(**inputs).pooler_output.pow(2).mean()

    def test_config_roundtrip(self):
        config = self.model_tester.get_config()
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            reloaded = type(config).from_pretrained(tmp)
        self.assertEqual(config.to_dict(), reloaded.to_dict())
        for field, value in self.invalid_config_values:
            with self.subTest(field=field, value=value):
                with self.assertRaisesRegex(ValueError, field):
                    self.model_tester.get_config(**{field: value})

    def test_save_load_roundtrip(self):
        for model_class in self.all_model_classes:
            model = model_class(self.model_tester.get_config()).eval()
            inputs = self.model_tester.prepare_inputs(2)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                self.assertFalse(os.path.exists(os.path.join(tmp, "adapter_config.json")))
                reloaded, info = model_class.from_pretrained(tmp, output_loading_info=True)
            for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
                self.assertEqual(len(info[key]), 0, f"{model_class.__name__} {key}: {info[key]}")
            reloaded.eval()
            with torch.no_grad():
                self.assertTrue(torch.equal(self._logits(model, inputs), self._logits(reloaded, inputs)))
            self.assertEqual({n for n, p in model.named_parameters() if p.requires_grad},
                             {n for n, p in reloaded.named_parameters() if p.requires_grad})

    def test_init_finite(self):
        """``from_pretrained`` on a checkpoint without the adapter keys initialises them (finite values)."""
        for model_class in self.all_model_classes:
            model = model_class(self.model_tester.get_config())
            adapter_markers = self.model_tester.adapter_key_markers
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                path = os.path.join(tmp, "model.safetensors")
                state = load_file(path)
                kept = {k: v for k, v in state.items() if not any(mark in k for mark in adapter_markers)}
                self.assertLess(len(kept), len(state))
                save_file(kept, path, metadata={"format": "pt"})
                reloaded, info = model_class.from_pretrained(tmp, output_loading_info=True)
            self.assertEqual(len(info["missing_keys"]), len(state) - len(kept))
            for name, param in reloaded.named_parameters():
                self.assertTrue(bool(torch.isfinite(param).all()), f"{name} not finite")
            for name, buf in reloaded.named_buffers():
                if buf.is_floating_point():
                    self.assertTrue(bool(torch.isfinite(buf).all()), f"buffer {name} not finite")

    def test_backward_grads(self):
        """Every trainable parameter gets a non-zero gradient; every frozen one gets none."""
        for model_class in self.all_model_classes:
            model = model_class(self.model_tester.get_config(**self.model_tester.grad_overrides)).train()
            self._loss(model, self.model_tester.prepare_inputs(3)).backward()
            for name, param in model.named_parameters():
                if param.requires_grad:
                    self.assertIsNotNone(param.grad, f"{name}: no gradient")
                    self.assertGreater(float(param.grad.abs().sum()), 0.0, f"{name}: zero gradient")
                else:
                    self.assertIsNone(param.grad, f"frozen {name} got a gradient")

    def test_only_adapters_updated(self):
        """Three optimiser steps change only trainable parameters; frozen ones stay bit-identical."""
        for model_class in self.all_model_classes:
            model = model_class(self.model_tester.get_config(**self.model_tester.grad_overrides)).train()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            # Adam: the prompt bypass reaches the loss only through the next gate's routing softmax, so its
            # gradients are tiny (~1e-10) and a plain SGD step would not move float32 weights
            optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            inputs = self.model_tester.prepare_inputs(3)
            for _ in range(3):
                optimizer.zero_grad()
                self._loss(model, inputs).backward()
                optimizer.step()
            for name, param in model.named_parameters():
                if param.requires_grad:
                    self.assertFalse(torch.equal(before[name], param.detach()), f"{name} did not change")
                else:
                    self.assertTrue(torch.equal(before[name], param.detach()), f"frozen {name} changed")
