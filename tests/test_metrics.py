import cv2
import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from basicsr.metrics import calculate_psnr, calculate_ssim

from difflid.metrics import fid_metric, lpips_metric
from difflid.metrics.fid_metric import calculate_fid
from difflid.metrics.float_metrics import calculate_psnr_float, calculate_ssim_float, float_image
from difflid.metrics.lpips_metric import calculate_lpips


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache: metric backbones must come from here and nowhere else."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(lpips_metric, '_MODELS', {})
    monkeypatch.setattr(fid_metric, '_INCEPTION', {})
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    return tmp_path / 'hub' / 'checkpoints'


def _images(n, seed, size=(40, 56)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def test_missing_backbones_name_the_file_and_where_to_get_it(torch_home):
    with pytest.raises(FileNotFoundError) as err:
        calculate_lpips(*_images(2, 0))
    assert str(torch_home / 'alexnet-owt-7be5be79.pth') in str(err.value) and 'download.pytorch.org' in str(err.value)
    with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
        calculate_fid(_images(2, 0), _images(2, 1))


def test_lpips_is_the_lpips_package_score(torch_home):
    import lpips

    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), torch_home / 'alexnet-owt-7be5be79.pth')  # random weights
    a, b = _images(2, 0)
    ours = calculate_lpips(a, b)
    reference = lpips.LPIPS(net='alex', verbose=False)  # loads the same file from the hub cache
    to_tensor = lambda x: torch.from_numpy(x[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    with torch.no_grad():
        expected = reference(to_tensor(a), to_tensor(b)).item()
    assert ours == pytest.approx(expected, rel=1e-5) and ours > 0
    assert calculate_lpips(a, a) == pytest.approx(0, abs=1e-6)
    assert calculate_lpips(a, b, crop_border=4) != pytest.approx(ours)


def test_fid_equals_the_frechet_distance_of_inception_features(torch_home):
    from pytorch_fid.inception import InceptionV3, _inception_v3

    torch.manual_seed(0)
    # same keys and shapes as the FID Inception weights (only forward passes differ), random values
    weights = _inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    torch.save(weights, torch_home / 'pt_inception-2015-12-05-6726825d.pth')
    restored, gt = _images(4, 0), _images(4, 1)
    fid = calculate_fid(restored, gt, dims=64)  # 64-d features keep the test fast; 2048 is the same code
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[64]]).eval()

    def stats(images):
        with torch.no_grad():
            tensors = [torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255 for im in images]
            feats = np.concatenate([model(t)[0].mean((2, 3)).double().numpy() for t in tensors])
        return feats.mean(0), np.cov(feats, rowvar=False)

    (m1, s1), (m2, s2) = stats(restored), stats(gt)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))
    assert fid == pytest.approx(expected, rel=1e-3, abs=1e-3) and fid > 0
    assert calculate_fid(gt, gt, dims=64) == pytest.approx(0, abs=1e-3)
    with pytest.raises(ValueError, match='dims'):
        calculate_fid(gt, gt, dims=100)
    with pytest.raises(ValueError, match='at least 2'):
        calculate_fid(gt[:1], gt)


def test_a_model_with_lpips_fails_at_start_up_without_the_weights(torch_home, tmp_path):
    from basicsr.models import build_model

    opt = {'name': 'x', 'model_type': 'ImageRestorationModel', 'num_gpu': 0, 'dist': False, 'rank': 0,
           'world_size': 1, 'is_train': False, 'network_g': {'type': 'DCP'},
           'path': {'pretrain_network_g': None, 'results_root': str(tmp_path)},
           'val': {'metrics': {'lpips': {'type': 'calculate_lpips', 'net': 'alex'}}}}
    with pytest.raises(FileNotFoundError, match="metric 'lpips'.*alexnet-owt-7be5be79.pth"):
        build_model(opt)


def _restored_pair(seed=0, size=(48, 64)):
    """A uint8 ground truth (as datasets store it) and a float 'restoration' of it, off by a smooth error and noise."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    gt = cv2.GaussianBlur(gt, (0, 0), 2)  # some structure, so SSIM is not near 0
    restored = np.clip(gt / 255 + 0.03 * rng.standard_normal(gt.shape) + 0.02, 0, 1)
    return restored, gt / 255


def test_float_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    restored, gt = _restored_pair()
    assert calculate_psnr_float(restored, gt) == pytest.approx(peak_signal_noise_ratio(gt, restored, data_range=1),
                                                               abs=1e-9)
    # Wang et al.'s SSIM as basicsr computes it: 11x11 Gaussian, sigma 1.5, population statistics, channel mean
    expected = structural_similarity(gt, restored, data_range=1, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert calculate_ssim_float(restored, gt) == pytest.approx(expected, abs=1e-9)
    # Y channel: BT.601 studio range (16-235) of the BGR inputs, peak 255
    y = lambda x: 16 + x @ np.array([24.966, 128.553, 65.481])  # noqa: E731
    assert calculate_psnr_float(restored, gt, test_y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(y(gt), y(restored), data_range=255), abs=1e-4)
    assert calculate_psnr_float(restored, gt, crop_border=4) == pytest.approx(
        peak_signal_noise_ratio(gt[4:-4, 4:-4], restored[4:-4, 4:-4], data_range=1), abs=1e-9)


def test_float_metrics_differ_from_basicsrs_by_the_rounding_only():
    restored, gt = _restored_pair(1)
    rounded = (restored * 255).round().astype(np.uint8)
    gt8 = (gt * 255).round().astype(np.uint8)
    for ours, basicsr_metric in ((calculate_psnr_float, calculate_psnr), (calculate_ssim_float, calculate_ssim)):
        assert ours(rounded / 255, gt) == pytest.approx(basicsr_metric(rounded, gt8, crop_border=0), abs=1e-9)
        assert ours(restored, gt) != pytest.approx(basicsr_metric(rounded, gt8, crop_border=0), abs=1e-4)
    with pytest.raises(TypeError, match='float images'):
        calculate_psnr_float(rounded, gt8)


def test_float_image_is_tensor2img_without_rounding():
    from basicsr.utils import tensor2img

    tensor = torch.rand(1, 3, 5, 7) * 1.2 - 0.1  # out of range on both sides, as a network output can be
    img = float_image(tensor)
    assert img.shape == (5, 7, 3) and img.dtype == np.float64 and img.min() >= 0 and img.max() <= 1
    np.testing.assert_array_equal((img * 255).round().astype(np.uint8), tensor2img([tensor]))
