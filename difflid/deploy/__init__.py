"""Deploying a trained model outside PyTorch.

``difflid.deploy.export`` (torch) turns a trained DiffLI²D and its frozen diffusion prior into one graph: an ONNX
file for onnxruntime, or a ``torch.export`` program. ``difflid.deploy.onnx_runner`` runs such a file with numpy, cv2,
Pillow (EXIF orientation) and onnxruntime only; it imports nothing from difflid, so ``tools/infer.py`` loads it
by its file path (``load_onnx_runner``) and never imports basicsr or torch for an ONNX model (importing it as
``difflid.deploy.onnx_runner`` works too, but runs difflid's ``__init__``, which imports basicsr).
"""
