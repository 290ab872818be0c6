"""Weight downloads (difflid/utils/download.py, difflid/priors/catalog.py, tools/download.py, the metrics' hub files)
against a loopback HTTP server only: resume, verification, mirrors, offline mode. Never touches the internet."""
import hashlib
import re
import runpy
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from difflid.metrics.hub_weights import require_hub_file
from difflid.priors import catalog
from difflid.priors.adm_unet_arch import ADMUNet, adm_flags
from difflid.utils.download import DownloadError, OfflineError, download_file
from tests.conftest import REPO_ROOT, free_port


class _Server:
    """Serves ``files`` (name -> bytes) under any folder, with Range requests; logs (path, Range header) of every
    request. ``cut`` = (n requests, bytes): the first n responses announce the full length but stop after that many
    bytes and close the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: tuple[int, int] = (0, 0)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append((self.path, self.headers.get('Range')))
                data = server.files.get(self.path.rsplit('/', 1)[-1])
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                match = re.match(r'bytes=(\d+)-$', self.headers.get('Range') or '')
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                else:
                    self.send_response(200)
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if len(server.requests) <= server.cut[0]:
                    body = body[:server.cut[1]]
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.base = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                       daemon=True)
        self.thread.start()


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.delenv('DIFFLID_OFFLINE', raising=False)
    monkeypatch.delenv('DIFFLID_MIRROR', raising=False)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _hash_named(data: bytes, stem: str = 'weights') -> str:
    """A torchvision-style name carrying the SHA-256 prefix of ``data``, computed here with hashlib."""
    return f'{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth'


def test_resume_after_a_cut_connection_with_progress(server, tmp_path, capsys):
    data = _payload(300_000)
    name = _hash_named(data)
    server.files[name] = data
    server.cut = (1, 100_000)
    dest = download_file(f'{server.base}/models/{name}', tmp_path / name, progress=True)
    assert dest.read_bytes() == data
    assert server.requests == [(f'/models/{name}', None), (f'/models/{name}', 'bytes=100000-')]
    assert not (tmp_path / f'{name}.part').exists()
    assert '100%' in capsys.readouterr().err  # the tqdm bar reached the end


def test_a_wrong_hash_is_refused_and_nothing_is_left(server, tmp_path):
    data = _payload(50_000)
    name = 'weights-00000000.pth'  # the name publishes a hash the bytes do not have
    assert not hashlib.sha256(data).hexdigest().startswith('00000000')
    server.files[name] = data
    with pytest.raises(DownloadError, match='SHA-256'):
        download_file(f'{server.base}/{name}', tmp_path / name, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_short_body_against_content_length_is_refused(server, tmp_path):
    data = _payload(50_000)
    server.files['model.pt'] = data
    server.cut = (100, 10_000)  # every response stops after 10 kB of what its Content-Length announced
    with pytest.raises(DownloadError, match='Content-Length'):
        download_file(f'{server.base}/model.pt', tmp_path / 'model.pt', retries=2, progress=False)
    assert not (tmp_path / 'model.pt').exists()
    assert len(server.requests) == 3
    assert [r for _, r in server.requests] == [None, 'bytes=10000-', 'bytes=20000-']
    assert (tmp_path / 'model.pt.part').stat().st_size == 30_000  # kept: the next attempt resumes from it


def test_the_mirror_env_var_serves_the_same_file_name(server, tmp_path, monkeypatch):
    data = _payload(20_000)
    name = _hash_named(data)
    server.files[name] = data
    monkeypatch.setenv('DIFFLID_MIRROR', f'{server.base}/mirror/')
    # a torch hub file missing from $TORCH_HOME is fetched, from the mirror, and checked by its name's hash
    path = require_hub_file(name, f'https://download.pytorch.org/models/{name}', used_for='a test')
    assert path == tmp_path / 'torch_home' / 'hub' / 'checkpoints' / name
    assert path.read_bytes() == data
    assert server.requests == [(f'/mirror/{name}', None)]


def test_offline_mode_makes_no_request(server, tmp_path, monkeypatch):
    server.files['alexnet-owt-7be5be79.pth'] = b'x'
    monkeypatch.setenv('DIFFLID_MIRROR', server.base)
    monkeypatch.setenv('DIFFLID_OFFLINE', '1')
    url = 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth'
    with pytest.raises(FileNotFoundError) as err:
        require_hub_file('alexnet-owt-7be5be79.pth', url, used_for='LPIPS (alex)')
    expected = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'alexnet-owt-7be5be79.pth'
    assert str(expected) in str(err.value) and 'DIFFLID_OFFLINE' in str(err.value)
    with pytest.raises(OfflineError):
        download_file(url, tmp_path / 'a.pth')
    assert server.requests == []
    assert not expected.exists()


def test_no_network_answering_gives_the_clear_message(server, tmp_path, monkeypatch):
    monkeypatch.setenv('DIFFLID_MIRROR', f'http://127.0.0.1:{free_port()}')  # nothing listens there
    with pytest.raises(FileNotFoundError, match='needs the backbone weights .*download failed'):
        require_hub_file('x-12345678.pth', 'https://download.pytorch.org/models/x-12345678.pth', used_for='FID')


def _cli():
    return runpy.run_path(str(REPO_ROOT / 'tools' / 'download.py'))['main']


def test_cli_unknown_name_is_one_error_line_listing_the_names(capsys):
    assert _cli()(['adm256_uncond', 'lpips-alexx']) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown weight file name 'lpips-alexx'")
    assert all(name in err[0] for name in ('adm256_uncond', 'lpips-alex', 'fid-inception', 'vgg16', 'resnet50'))


def test_cli_adm_file_sidecar_hash_and_structural_check(server, tmp_path, monkeypatch, capsys):
    """tools/download.py adm256_uncond --mirror: the served bytes' hashlib SHA-256 lands in the sidecar; a file that is
    not the preset's state dict is refused and leaves nothing at the final path."""
    tiny = catalog.WeightFile('256x256_diffusion_uncond.pt', catalog.CATALOG['adm256_uncond'].url, hub=False,
                              adm_preset='adm_tiny')  # the real preset's file is 2.1 GB: a tiny UNet stands in
    monkeypatch.setitem(catalog.CATALOG, 'adm256_uncond', tiny)
    torch.manual_seed(0)
    state_file = tmp_path / 'state.pt'
    torch.save(ADMUNet(**adm_flags('adm_tiny')).state_dict(), state_file)
    served = state_file.read_bytes()
    server.files['256x256_diffusion_uncond.pt'] = served
    main = _cli()
    good = tmp_path / 'good'
    assert main(['adm256_uncond', '--dir', str(good), '--mirror', server.base, '--no-progress']) == 0
    assert (good / '256x256_diffusion_uncond.pt').read_bytes() == served
    sidecar = (good / '256x256_diffusion_uncond.pt.sha256').read_text().split()
    assert sidecar == [hashlib.sha256(served).hexdigest(), '256x256_diffusion_uncond.pt']

    server.files['256x256_diffusion_uncond.pt'] = _payload(40_000)  # right size header, wrong content
    bad = tmp_path / 'bad'
    capsys.readouterr()
    assert main(['adm256_uncond', '--dir', str(bad), '--mirror', server.base, '--no-progress']) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('error: adm256_uncond:') and 'not a PyTorch state dict' in err[0]
    assert list(bad.iterdir()) == []
    with pytest.raises(ValueError, match='does not fit the adm256_uncond UNet'):  # a state dict of another preset
        catalog.check_adm_structure('adm256_uncond', state_file)


def test_catalog_destinations():
    """ADM files go to pretrained/ (or --dir); backbones to torch hub's checkpoints, under torchvision's names."""
    assert catalog.CATALOG['adm256_uncond'].destination() == Path('pretrained/256x256_diffusion_uncond.pt')
    hub = Path(torch.hub.get_dir()) / 'checkpoints'
    assert catalog.CATALOG['vgg16'].destination() == hub / 'vgg16-397923af.pth'
    assert catalog.CATALOG['resnet50'].destination() == hub / 'resnet50-0676ba61.pth'
    assert catalog.CATALOG['fid-inception'].destination().parent == hub
