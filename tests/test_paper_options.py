"""The rows of one table of the paper compare feature sources or modules, never precisions: every variant of a sweep
(Tables 2 and 3, Fig. 8) runs its frozen prior at the precision of the sweep's first variant (the task file)."""
from pathlib import Path

import pytest
import yaml

from difflid.priors.base import PRIOR_DEFAULTS
from difflid.utils.options import resolve_option_file
from tests.conftest import REPO_ROOT

# sweeps of option-file variants (a grid sweep changes one key of one file: its points share everything else)
SWEEPS = sorted(p for p in (REPO_ROOT / 'options' / 'sweeps').glob('*.yml')
                if p.stem != 'smoke' and 'variants' in yaml.safe_load(p.read_text()))


def _prior_dtype(option_file: Path) -> str:
    prior = yaml.safe_load(resolve_option_file(option_file).read_text())['network_prior']
    return prior.get('dtype', PRIOR_DEFAULTS['dtype'])


@pytest.mark.parametrize('sweep', SWEEPS, ids=lambda p: p.stem)
def test_every_row_of_a_table_runs_the_prior_at_one_precision(sweep):
    """Fails if a row sets another dtype than the task file (or inherits a member default that differs)."""
    variants = yaml.safe_load(sweep.read_text())['variants']
    dtypes = {name: _prior_dtype(sweep.parent / path) for name, path in variants.items()}
    assert len(dtypes) >= 2 and len(set(dtypes.values())) == 1, dtypes
