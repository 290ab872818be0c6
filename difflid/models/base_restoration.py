"""ImageRestorationModel: basicsr's SRModel with what long runs and benchmark tables need: atomic
checkpoints that also record the network options (so tools/infer.py can rebuild the network), a NaN
guard, more optimizers, option checks at start-up, set-level metrics (FID), and test reports
(per-image CSV, mean table, side-by-side sheets). difflid's other models build on it; registered, it
also serves stock basicsr networks and the DCP baseline."""
import os
from os import path as osp

import torch
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from difflid.metrics import FLOAT_METRICS, SET_METRICS, float_image, require_metric_weights
from difflid.metrics.no_reference import NO_REFERENCE_METRICS, check_no_reference_metrics, score_no_reference
from difflid.reports import (
    group_means,
    mean_table,
    summary_report,
    summary_table,
    write_means,
    write_metric_csv,
    write_sheet,
    write_summary,
)
from difflid.utils.checkpoint_io import (
    atomic_open,
    atomic_torch_save,
    checkpoint_suffix,
    load_network_weights,
    other_format,
    save_checkpoint,
)
from difflid.utils.errors import OptionError, data_parallel_message
from difflid.utils.option_schema import OPTIMIZERS
from difflid.utils.options import option_names
from difflid.utils.paths import absolute_paths

__all__ = ['ImageRestorationModel', 'RestorationModel', 'check_arch_options']



def check_arch_options(block_name: str, block: dict, registry=ARCH_REGISTRY) -> None:
    """Fail at start-up, naming the block and key, if a block has no/unknown ``type`` or unknown keys."""
    if not isinstance(block, dict) or 'type' not in block:
        raise KeyError(f"option block '{block_name}' needs a 'type' (a registered class, e.g. DiffLI2D)")
    if block['type'] not in registry:
        raise KeyError(f"{block_name}.type: nothing named {block['type']!r} is registered; "
                       f'registered: {sorted(registry.keys())}')
    names = option_names(registry.get(block['type']))
    if names is None:
        return
    unknown = sorted(set(block) - {'type'} - names)
    if unknown:
        raise KeyError(f'{block_name}: unknown option(s) {unknown} for {block["type"]}; valid: {sorted(names)}')


def _refuse_full_reference(where: str, metrics: list[str]) -> None:
    """A set without ground truth cannot give full-reference scores: one error naming the set and the metrics, rather
    than a report that silently lacks them."""
    raise OptionError(f'val.metrics: {", ".join(metrics)} compare with ground truth, which {where} does not have; '
                      'score it with no-reference metrics only, e.g. niqe: {type: calculate_niqe, crop_border: 0, '
                      'better: lower} (docs/evaluation.md, "Evaluation without ground truth")')


def _check_reference_metrics(opt: dict) -> None:
    """At start-up: full-reference metrics asked of a test set whose dataset class has no GT (``HAS_GT = False``)."""
    metric_opts = (opt.get('val') or {}).get('metrics') or {}
    full_reference = [n for n, m in metric_opts.items() if m.get('type') not in NO_REFERENCE_METRICS]
    for phase, block in (opt.get('datasets') or {}).items():
        if phase == 'train' or not isinstance(block, dict) or block.get('type') not in DATASET_REGISTRY:
            continue
        if full_reference and not getattr(DATASET_REGISTRY.get(block['type']), 'HAS_GT', True):
            _refuse_full_reference(f'datasets.{phase} ({block["type"]})', full_reference)


class RestorationModel(SRModel):
    """SRModel with the behaviour long runs and benchmark tables need (see module docstring).

    Options beyond SRModel's: ``train.diff_opt`` (a DiffLoss block, logged as l_diff_eps and l_diff_h),
    ``val.input_metrics`` (also score the degraded inputs), ``val.num_sheets`` (input | restored | GT sheets
    for the first N test images; default 4 at test time).
    """

    def __init__(self, opt: dict) -> None:
        check_arch_options('network_g', opt.get('network_g'))
        if opt['is_train']:
            optim = opt['train'].get('optim_g', {})
            if optim.get('type') not in OPTIMIZERS:
                raise KeyError(f"train.optim_g.type must be one of {list(OPTIMIZERS)}, got {optim.get('type')!r}")
            if opt['train'].get('diff_opt'):
                check_arch_options('train.diff_opt', opt['train']['diff_opt'], LOSS_REGISTRY)
        require_metric_weights((opt.get('val') or {}).get('metrics'))
        check_no_reference_metrics((opt.get('val') or {}).get('metrics'))
        _check_reference_metrics(opt)
        # what the training loop adds to the next training state (random states, epoch position: difflid.entry)
        self.training_state_extra: dict = {}
        self.input_metric_results: dict[str, float] = {}
        self.summary_groups: dict[str, dict] = {}  # this validation round's (set, task) means, for report_summary
        super().__init__(opt)

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        """basicsr's, with DDP on the CPU (no ``device_ids``) and no DataParallel: training refuses it (the
        prior would run the whole batch on GPU 0), testing without a launcher uses one GPU."""
        net = net.to(self.device)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            return DistributedDataParallel(net, device_ids=device_ids,
                                           find_unused_parameters=self.opt.get('find_unused_parameters', False))
        num_gpu = int(self.opt['num_gpu'])
        if num_gpu > 1 and self.opt['is_train']:
            raise OptionError(data_parallel_message(self.opt['model_type'], num_gpu))
        if num_gpu > 1:
            get_root_logger().info(f'{num_gpu} GPUs visible and no launcher: testing on one GPU ({self.device}), '
                                   'without DataParallel. One process per GPU: torchrun --nproc_per_node='
                                   f'{num_gpu} tools/test.py -opt <option file> --launcher pytorch')
        return net

    def init_training_settings(self) -> None:
        """SRModel's (EMA, pixel/perceptual losses, optimizer, schedulers), plus ``train.diff_opt`` (DiffLoss)."""
        super().init_training_settings()
        diff_opt = self.opt['train'].get('diff_opt')
        self.cri_diff = self.build_diff_loss(dict(diff_opt)) if diff_opt else None

    def build_diff_loss(self, diff_opt: dict) -> torch.nn.Module:
        return build_loss(diff_opt).to(self.device)

    def restore_train(self) -> torch.Tensor:
        """The training forward: net_g on the batch (models with extra inputs override this)."""
        return self.net_g(self.lq)

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        self.output = self.restore_train()
        losses = {}
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            losses['l_percep'], losses['l_style'] = self.cri_perceptual(self.output, self.gt)
        if self.cri_diff:
            losses['l_diff_eps'], losses['l_diff_h'] = self.cri_diff(self.output, self.gt)
        losses = {name: value for name, value in losses.items() if value is not None}
        l_total = sum(losses.values())
        self.check_finite(l_total, current_iter)
        l_total.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(losses)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # --- optimisation -------------------------------------------------------------------------------------------
    def setup_optimizers(self) -> None:
        """As SRModel, without popping ``type`` out of the options (they are saved and reused)."""
        optim_opt = dict(self.opt['train']['optim_g'])
        optim_type = optim_opt.pop('type')
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        """basicsr 1.4.2 knows only Adam; any of ``OPTIMIZERS`` from torch.optim works here."""
        if optim_type not in OPTIMIZERS:
            raise KeyError(f'train.optim_g.type must be one of {list(OPTIMIZERS)}, got {optim_type!r}')
        return getattr(torch.optim, optim_type)(params, lr, **kwargs)

    def check_finite(self, loss: torch.Tensor, current_iter: int) -> None:
        """Stop before a NaN/Inf loss reaches the weights (and so any checkpoint)."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f'loss is {loss.item()} at iteration {current_iter}; stopping before the weights are updated. '
                'The last checkpoint is intact: lower the learning rate and resume with --auto_resume.')

    # --- atomic checkpoints ---------------------------------------------------------------------------------------
    @master_only
    def save_network(self, net, net_label: str, current_iter, param_key='params') -> None:
        """basicsr's save_network, written atomically (a kill mid-save keeps the previous file). net_g
        checkpoints also record the network options, with relative paths (the prior's checkpoint) made
        absolute against the working directory basicsr read them from, so tools/infer.py works from anywhere."""
        label = 'latest' if current_iter == -1 else current_iter
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {
            key: {k.removeprefix('module.'): v.cpu() for k, v in self.get_bare_model(n).state_dict().items()}
            for n, key in zip(nets, keys, strict=True)
        }
        if net_label == 'net_g':  # lets tools/infer.py rebuild the network from the checkpoint alone
            save_dict['config'] = self.checkpoint_config()
        name = f'{net_label}_{label}{checkpoint_suffix(self.opt)}'
        save_checkpoint(save_dict, osp.join(self.opt['path']['models'], name))

    def checkpoint_config(self) -> dict:
        """What a net_g checkpoint records beside its weights: the network options, with relative paths (the prior's
        checkpoint) made absolute against the working directory basicsr read them from."""
        return {k: absolute_paths(self.opt[k], os.getcwd()) for k in ('network_g', 'network_prior') if k in self.opt}

    def load_network(self, net: torch.nn.Module, load_path: str, strict: bool = True,
                     param_key: str | None = 'params') -> None:
        """basicsr's load_network, for .pth and .safetensors files, and a checkpoint of another configuration is one
        error naming the file and the options that differ (the checkpoint's recorded ``config`` against this run's
        network blocks). On a resume, basicsr's ``check_resume`` names ``net_g_<iter>.pth``: a run saving safetensors
        (or switched between formats) has that iteration's checkpoint in the other format, which is then loaded."""
        if self.opt['path'].get('resume_state') and not osp.isfile(load_path):
            alternative = other_format(load_path)
            load_path = str(alternative) if alternative is not None and alternative.is_file() else load_path
        get_root_logger().info(f'Loading {type(self.get_bare_model(net)).__name__} model from {load_path}, '
                               f'with param key: [{param_key}].')
        expected = {'network_g': self.opt['network_g'], 'network_prior': self.opt.get('network_prior')}
        load_network_weights(self.get_bare_model(net), load_path, param_key, strict, expected_config=expected)

    @master_only
    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """basicsr's save_training_state, written atomically after the networks of the same iteration, with
        ``training_state_extra`` (what an exact resume needs, set by the training loop)."""
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers], **self.training_state_extra}
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    # --- validation and test reports ---------------------------------------------------------------------------
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img: bool) -> None:
        """SRModel's validation, keeping per-image metrics and scoring set-level metrics (FID) once per set.
        At test time it writes ``results/<name>/metrics_<set>.csv`` (per image), ``metrics_<set>.md`` (means,
        also logged) and ``sheets/<set>/<image>.png`` (input | restored | GT) for the first ``num_sheets`` images.
        No-reference metrics (NIQE, ``NO_REFERENCE_METRICS``) score the restored image alone, and with
        ``input_metrics`` the input too, so a set without ground truth (``UnpairedImageDataset``) gets the same
        reports; full-reference metrics on such a set are refused (at start-up for a class with ``HAS_GT = False``)."""
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        metric_opts = val_opt.get('metrics') or {}
        image_metrics = {n: m for n, m in metric_opts.items() if m['type'] not in SET_METRICS | NO_REFERENCE_METRICS}
        no_reference = {n: m for n, m in metric_opts.items() if m['type'] in NO_REFERENCE_METRICS}
        set_metrics = {n: m for n, m in metric_opts.items() if m['type'] in SET_METRICS}
        score_input = bool(val_opt.get('input_metrics', False))
        num_sheets = int(val_opt.get('num_sheets', 0 if self.opt['is_train'] else 4))
        if metric_opts:
            self._initialize_best_metric_results(dataset_name)
        records, restored_set, gt_set = [], [], []
        pbar = tqdm(total=len(dataloader), unit='image') if val_opt.get('pbar', False) else None
        for index, val_data in enumerate(dataloader):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            restored, lq = tensor2img([visuals['result']]), tensor2img([visuals['lq']])
            gt = tensor2img([visuals['gt']]) if 'gt' in visuals else None
            record = {'image': img_name}
            if 'task' in val_data:  # the degradation's label: per-task rows and the all-in-one summary
                record['task'] = val_data['task'][0]
            if gt is None and (image_metrics or set_metrics):  # a dataset class that does not declare HAS_GT
                _refuse_full_reference(f'test set {dataset_name}', [*image_metrics, *set_metrics])
            for n, m in no_reference.items():  # the image alone: scored with or without ground truth
                record[n] = score_no_reference(m, restored, n, img_name)
                if score_input:
                    record[f'{n}_input'] = score_no_reference(m, lq, n, img_name)
            if gt is not None:
                record.update({n: self._score(m, visuals, 'result', restored, gt) for n, m in image_metrics.items()})
                if score_input:
                    record.update({f'{n}_input': self._score(m, visuals, 'lq', lq, gt)
                                   for n, m in image_metrics.items()})
                if set_metrics:
                    restored_set.append(restored)
                    gt_set.append(gt)
            records.append(record)
            self.__dict__.pop('gt', None)
            del self.lq, self.output
            if save_img:
                imwrite(restored, self._visualization_path(dataset_name, img_name, current_iter))
            if not self.opt['is_train'] and index < num_sheets:
                panels = {'input': lq, 'restored': restored, **({'GT': gt} if gt is not None else {})}
                write_sheet(osp.join(self.opt['path']['results_root'], 'sheets', dataset_name, f'{img_name}.png'),
                            panels)
            if pbar:
                pbar.update(1)
        if pbar:
            pbar.close()
        if not metric_opts or not (gt_set or any(len(r) > 1 for r in records)):
            return  # nothing to score: no metrics asked for, or no ground truth
        means = {n: sum(r[n] for r in records) / len(records) for n in records[0] if n not in ('image', 'task')}
        for n, m in set_metrics.items():
            opt = dict(m)
            means[n] = float(METRIC_REGISTRY.get(opt.pop('type'))(restored_set, gt_set, **opt))
        groups = group_means(dataset_name, records)
        if len(groups) == 1:
            next(iter(groups.values()))['means'] = dict(means)  # with the set-level metrics
        self.summary_groups.update(groups)
        self.metric_results = {n: means[n] for n in metric_opts}
        self.input_metric_results = {n: means[n] for n in means if n.endswith('_input')}
        if self.opt['is_train']:
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if len(groups) > 1:
            self._log_task_rows(dataset_name, groups, current_iter, tb_logger)
        if not self.opt['is_train']:
            self._write_reports(dataset_name, records, means, groups)

    def _log_task_rows(self, dataset_name: str, groups: dict[str, dict], current_iter, tb_logger) -> None:
        """A set mixing tasks: its mean per task (logged, and to TensorBoard under metrics/<set>/<task>/...)."""
        table = mean_table({g['task']: {'images': g['images'], **g['means']} for g in groups.values()}, 'task')
        get_root_logger().info(f'Validation {dataset_name} per task:\n{table}')
        if tb_logger:
            for group in groups.values():
                for metric, value in group['means'].items():
                    tb_logger.add_scalar(f"metrics/{dataset_name}/{group['task']}/{metric}", value, current_iter)

    def report_summary(self, current_iter, tb_logger=None) -> dict | None:
        """After a validation (or test) round over every set: the all-in-one table (``val.summary``; see
        ``difflid.reports.summary_report``) of the round's groups, logged (``metrics/summary/average_<metric>`` in
        TensorBoard) and, at test time, written to ``metrics_summary.{md,json,csv}``. Nothing when the round had a
        single group and no ``val.summary``; the groups are cleared for the next round."""
        groups, self.summary_groups = self.summary_groups, {}
        summary_opt = (self.opt.get('val') or {}).get('summary')
        if not groups or (len(groups) < 2 and not summary_opt):
            return None
        report = summary_report(groups, summary_opt)
        name = self.opt['name'] if not self.opt['is_train'] else f"{self.opt['name']} @ {current_iter}"
        table = summary_table(report, name)
        if not self.opt['is_train'] and self.opt.get('rank', 0) == 0:
            write_summary(self.opt['path']['results_root'], report, table)
        get_root_logger().info('All-in-one summary:\n' + table)
        if tb_logger:
            for metric, value in report['average'].items():
                tb_logger.add_scalar(f'metrics/summary/average_{metric}', value, current_iter)
        return report

    def _log_validation_metric_values(self, current_iter, dataset_name: str, tb_logger) -> None:
        """SRModel's lines, plus the inputs' scores (``val.input_metrics``); the best value and its iteration only in
        training (a test is one evaluation, labelled by no iteration)."""
        lines = [f'Validation {dataset_name}']
        for metric, value in self.metric_results.items():
            line = f'\t # {metric}: {value:.4f}'
            if self.opt['is_train']:
                best = self.best_metric_results[dataset_name][metric]
                line += f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter'
            lines.append(line)
        lines += [f'\t # {metric}: {value:.4f}' for metric, value in self.input_metric_results.items()]
        get_root_logger().info('\n'.join(lines) + '\n')
        if tb_logger:
            for metric, value in {**self.metric_results, **self.input_metric_results}.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{metric}', value, current_iter)

    @staticmethod
    def _score(metric_opt: dict, visuals: dict, key: str, img8, gt8) -> float:
        """One image metric: basicsr's on the uint8 images, a float metric on the unrounded ``visuals[key]``."""
        if metric_opt['type'] in FLOAT_METRICS:
            data = {'img': float_image(visuals[key]), 'img2': float_image(visuals['gt'])}
        else:
            data = {'img': img8, 'img2': gt8}
        return float(calculate_metric(data, dict(metric_opt)))

    def _visualization_path(self, dataset_name: str, img_name: str, current_iter) -> str:
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')

    @master_only
    def _write_reports(self, dataset_name: str, records: list[dict], means: dict[str, float],
                       groups: dict[str, dict] | None = None) -> None:
        root = self.opt['path']['results_root']
        groups = groups or {}
        write_metric_csv(osp.join(root, f'metrics_{dataset_name}.csv'), records)
        rows = {dataset_name: {'images': len(records), **means}}
        if len(groups) > 1:  # a set mixing tasks: a row per task and their unweighted average
            rows.update({f"task {g['task']}": {'images': g['images'], **g['means']} for g in groups.values()})
            rows['average of the tasks'] = {'images': len(records), **{
                m: sum(g['means'][m] for g in groups.values()) / len(groups) for m in next(iter(groups.values()))[
                    'means']}}
        table = mean_table(rows)
        with atomic_open(osp.join(root, f'metrics_{dataset_name}.md'), 'w') as f:
            f.write(table)
        metric_opts = self.opt['val'].get('metrics') or {}
        lower = {n for n, m in metric_opts.items() if m.get('better', 'higher') == 'lower'}
        write_means(osp.join(root, f'metrics_{dataset_name}.json'), len(records), means,
                    set_level={n for n, m in metric_opts.items() if m['type'] in SET_METRICS},
                    lower_better=lower | {f'{n}_input' for n in lower},
                    tasks={g['task']: {'images': g['images'], 'means': g['means']} for g in groups.values()}
                    if len(groups) > 1 else None)
        get_root_logger().info('Test metrics (mean over images):\n' + table)


@MODEL_REGISTRY.register()
class ImageRestorationModel(RestorationModel):
    """RestorationModel for any network ``net_g(lq) -> restored`` (stock basicsr archs, the DCP baseline)."""
