"""tools/test.py: basicsr's ``test_pipeline`` rebuilt from its parts, creating ``results/<name>/`` only once the
options, the dataset files, the datasets and the model (with its weights) are known to work."""
from os import path as osp
from pathlib import Path

from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_time_str

from difflid.entry.startup import StartupLog, begin, prepare_folders

__all__ = ['test']


def test(root: str | Path, argv: list[str]) -> None:
    """tools/test.py with ``argv`` (its arguments) and ``root`` (where results/ goes).

    Raises OptionError/FileNotFoundError for a test that cannot start, before creating or moving anything.
    """
    run = begin(root, argv, is_train=False)
    if run is None:  # --check
        return
    opt = run.opt
    log = StartupLog()
    logger = log.logger
    with log.building(run):
        loaders = []
        for _, dataset_opt in sorted(opt['datasets'].items()):
            test_set = build_dataset(dataset_opt)
            loaders.append(build_dataloader(test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                            sampler=None, seed=opt['manual_seed']))
            logger.info(f"Number of test images in {dataset_opt['name']}: {len(test_set)}")
        model = build_model(opt)
    moved = prepare_folders(opt, resumed=False)
    log.attach_file(osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log"))
    for line in moved:
        logger.warning(line)
    save_img = (opt.get('val') or {}).get('save_img', False)
    for loader in loaders:
        logger.info(f"Testing {loader.dataset.opt['name']}...")
        model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=save_img)
    if hasattr(model, 'report_summary'):  # per-task columns and their average (all-in-one)
        model.report_summary(current_iter=opt['name'])
