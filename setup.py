"""Install with `bash tools/install_env.sh` (creates .venv), or by hand:
pip install -U setuptools wheel && pip install --no-build-isolation torch==2.14.1 torchvision==0.29.1 -e .
(--no-build-isolation: basicsr 1.4.2 is an sdist that would otherwise build against a throw-away torch)."""
from pathlib import Path

from setuptools import find_packages, setup

version: dict = {}
exec(Path('difflid/version.py').read_text(), version)

setup(
    name='difflid',
    version=version['__version__'],
    description='DiffLI2D (h-space guided image restoration) and DiffLoss as a BasicSR plugin',
    long_description=Path('README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='MIT',
    packages=find_packages(include=['difflid', 'difflid.*']),
    package_data={'difflid': ['weights/*.pth', 'weights/*.safetensors']},  # built-in prior and demo model
    python_requires='>=3.10',
    install_requires=[
        'torch>=2.1',
        'torchvision>=0.16',
        'basicsr==1.4.2',
        'mmengine>=0.10',
        'pillow',  # EXIF orientation of users' photos (difflid/image_io.py)
        'jsonschema>=4.18',  # option files are checked against a JSON schema before a run starts
        'lmdb',
        'opencv-python',
        'lpips',
        'pytorch-fid',
        'scipy<1.18',  # pytorch-fid 0.3.0 calls linalg.sqrtm(disp=...), which SciPy 1.18 removes
        'pyyaml',
        'safetensors>=0.4',  # logger.save_checkpoint_format: safetensors, and reading such checkpoints (no pickle)
        'timm',
        'tensorboard',
        'scikit-image',
        'tqdm',
        'scikit-learn',  # the h-space probe: t-SNE, 1-NN and linear probes
        'matplotlib',  # the probe's and sweeps' figures
    ],
    # guided-diffusion-sdk packages OpenAI's guided-diffusion: the tests' numerical reference for ADMUNet.
    # diffusers: DiffusersUNetExtractor (a UNet2DModel save_pretrained folder as the prior); optional.
    # onnx: tools/export.py (torch's ONNX exporter needs onnx and onnxscript); onnxruntime: running the exported
    # model (tools/infer.py -opt model.onnx; onnxruntime-gpu instead for CUDA). Lower bounds: the versions tested.
    extras_require={'diffusers': ['diffusers>=0.30'],
                    'iqa': ['pyiqa>=0.1.13'],  # optional no-reference metrics (BRISQUE, MUSIQ, ...): pyiqa_metric
                    'onnx': ['onnx>=1.23', 'onnxscript>=0.7'],
                    'onnxruntime': ['onnxruntime>=1.32', 'pillow'],
                    'demo': ['gradio>=6'],  # tools/demo_app.py: the browser demo
                    'dev': ['pytest', 'ruff', 'import-linter', 'guided-diffusion-sdk==1.0.0', 'diffusers>=0.30',
                            'onnx>=1.23',
                            'onnxscript>=0.7', 'onnxruntime>=1.32',
                            'gradio>=6', 'selenium>=4']},  # the demo and its browser test (headless Chromium)
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: MIT License',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
