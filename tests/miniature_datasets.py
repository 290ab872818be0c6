"""Miniature copies of the benchmarks' layouts, with the real naming schemes and their traps.

Every GT image carries a signature (its id, as a flat 8x8 block at the centre), and each LQ image is a
degraded copy of its GT that keeps the block: a prepared pair is right exactly when the two decoded
ids agree. Flat 8x8 blocks on the 8-pixel grid survive JPEG.
"""
from pathlib import Path

import cv2
import numpy as np

H, W = 32, 48
STEP = 12  # id -> grey level step, decodable through JPEG


def signature_image(ident: int, size: tuple[int, int] = (H, W), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(ident * 1000 + seed)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    cy, cx = size[0] // 2 // 8 * 8, size[1] // 2 // 8 * 8
    img[cy:cy + 8, cx:cx + 8] = STEP * ident
    return img


def decode(img: np.ndarray) -> int:
    """The id of an (H, W, 3) image in [0, 1] or uint8, read at its centre block."""
    img = np.asarray(img, dtype=np.float32)
    if img.max() <= 1.0:
        img = img * 255
    h, w = img.shape[:2]
    cy, cx = h // 2 // 8 * 8, w // 2 // 8 * 8
    return int(round(float(img[cy + 2:cy + 6, cx + 2:cx + 6].mean()) / STEP))


def degrade(gt: np.ndarray, k: int = 0) -> np.ndarray:
    """A hazy-looking LQ that keeps the centre signature block."""
    lq = (gt.astype(np.float32) * 0.5 + 80 + 5 * k).clip(0, 255).astype(np.uint8)
    h, w = gt.shape[:2]
    cy, cx = h // 2 // 8 * 8, w // 2 // 8 * 8
    lq[cy:cy + 8, cx:cx + 8] = gt[cy:cy + 8, cx:cx + 8]
    return lq


def write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 98] if path.suffix == '.jpg' else []
    assert cv2.imwrite(str(path), img, params), path


def build_its(root: Path) -> None:
    for ident in (1, 2, 3, 4):
        write(root / 'clear' / f'{ident}.png', signature_image(ident))
        for k, beta in enumerate(('0.90179', '0.81234')):  # dots in the names: basicsr's LMDB reader trap
            write(root / 'hazy' / f'{ident}_{k + 1}_{beta}.png', degrade(signature_image(ident), k))
    write(root / 'clear' / '4.jpg', signature_image(4))  # duplicate GT name: 4.png and 4.jpg
    write(root / 'hazy' / '9_1_0.85.png', degrade(signature_image(9)))  # no clear 9.png
    write(root / 'clear' / '7.png', signature_image(7))  # clear without hazy
    (root / 'hazy' / '3_3_0.95.png').write_bytes(b'not a png')  # unreadable
    write(root / 'hazy' / '2_3_0.7.png', cv2.cvtColor(degrade(signature_image(2)), cv2.COLOR_BGR2GRAY))  # grayscale


def build_sots(root: Path, ext: str = '.png') -> None:
    for i, ident in enumerate((14, 15, 16)):
        gt = signature_image(ident)
        for k in (1, 2):
            write(root / 'hazy' / f'{1400 + i}_{k}{ext}', degrade(gt, k))
        if ident == 16:
            write(root / 'gt' / f'{1400 + i}.png', gt)  # already the hazy size
        else:  # the NYU white border: 10 px on every side
            write(root / 'gt' / f'{1400 + i}.png', cv2.copyMakeBorder(gt, 10, 10, 10, 10, cv2.BORDER_CONSTANT,
                                                                      value=(255, 255, 255)))
    rgba = cv2.cvtColor(degrade(signature_image(17)), cv2.COLOR_BGR2BGRA)
    write(root / 'hazy' / f'1403_1{ext if ext == ".png" else ".png"}', rgba)
    write(root / 'gt' / '1403.png', signature_image(17))
    deep = (degrade(signature_image(18)).astype(np.uint16) * 257)
    write(root / 'hazy' / '1404_1.png', deep)  # 16-bit
    write(root / 'gt' / '1404.png', signature_image(18))
    write(root / 'hazy' / '1405_1.png', degrade(signature_image(19))[:24])  # size mismatch, not a 20-px border
    write(root / 'gt' / '1405.png', signature_image(19))


def build_ots(root: Path) -> None:
    for ident in (5, 6):
        write(root / 'clear' / f'{ident:04d}.jpg', signature_image(ident))
        write(root / 'hazy' / 'part1' / f'{ident:04d}_0.8_0.2.jpg', degrade(signature_image(ident)))


def build_ntire(root: Path, split_folders: bool) -> None:
    for number in (1, 2, 3, 51, 52):
        ident = number % 20 + 1
        hazy_dir, gt_dir = (root / 'hazy', root / 'GT') if split_folders else (root, root)
        write(gt_dir / f'{number:02d}_GT.png', signature_image(ident))
        write(hazy_dir / f'{number:02d}_hazy.png', degrade(signature_image(ident)))


def build_lol_v1(root: Path) -> None:
    for folder, idents in (('our485', (1, 2, 3)), ('eval15', (4, 5))):
        for ident in idents:
            write(root / folder / 'high' / f'{ident * 11}.png', signature_image(ident))
            write(root / folder / 'low' / f'{ident * 11}.png', degrade(signature_image(ident)))
    write(root / '__MACOSX' / 'our485' / 'low' / '._11.png', signature_image(1))  # archive debris
    write(root / 'our485' / 'low' / '99.png', degrade(signature_image(9))[:, :40])  # size mismatch
    write(root / 'our485' / 'high' / '99.png', signature_image(9))


def build_lol_v2(root: Path, part: str) -> None:
    for split, idents in (('Train', (1, 2)), ('Test', (3,))):
        for ident in idents:
            write(root / part / split / 'Normal' / f'normal{ident:05d}.png', signature_image(ident))
            write(root / part / split / 'Low' / f'low{ident:05d}.png', degrade(signature_image(ident)))


def build_rain(root: Path, prefixed: bool) -> None:
    for ident in (1, 2, 3):
        lq_name, gt_name = (f'rain-{ident:03d}.png', f'norain-{ident:03d}.png') if prefixed else (f'{ident}.png',) * 2
        write(root / 'target' / gt_name, signature_image(ident))
        write(root / 'input' / lq_name, degrade(signature_image(ident)))


# dataset -> (builder, {split: expected pair count}, file names that must be reported as skipped)
LAYOUTS = {
    'its': (build_its, {'train': 6}, ['4_1_0.90179.png', '9_1_0.85.png', '7.png', '3_3_0.95.png', '2_3_0.7.png']),
    'sots-indoor': (build_sots, {'test': 6}, ['1403_1.png', '1404_1.png', '1405_1.png']),
    'sots-outdoor': (lambda root: build_sots(root, '.jpg'), {'test': 6}, ['1403_1.png', '1404_1.png', '1405_1.png']),
    'ots': (build_ots, {'train': 2}, []),
    'dense-haze': (lambda root: build_ntire(root, True), {'train': 3, 'test': 2}, []),
    'nh-haze': (lambda root: build_ntire(root, False), {'train': 3, 'test': 2}, []),
    'lol-v1': (build_lol_v1, {'train': 3, 'test': 2}, ['99.png']),
    'lol-v2-real': (lambda root: build_lol_v2(root, 'Real_captured'), {'train': 2, 'test': 1}, []),
    'lol-v2-synthetic': (lambda root: build_lol_v2(root, 'Synthetic'), {'train': 2, 'test': 1}, []),
    'rain13k': (lambda root: build_rain(root, False), {'train': 3}, []),
    'rain-test': (lambda root: build_rain(root, True), {'test': 3}, []),
}
