"""Float64 NumPy/SciPy references, one module per metric: the oracles of the tests and
the baselines of the benchmarks, written plainly and independently of the engine.

``ncti_jax.reference.score_zoo`` and the other names below are NCTI's
(:mod:`ncti_jax.reference.ncti`). The other metrics' references (issue #14: the
batched kernels come next) are imported from their modules: ``logme``, ``hscore``
(H-score and the Ledoit-Wolf shrinkage H-score), ``transrate``, ``gbc``, ``leep``
(LEEP and NCE), ``parc``, ``sfda``, ``nleep`` and ``etran``. Each module's docstring
gives its formula, its source of truth, the parity measured against the original
code and every deliberate deviation from it.
"""

from .ncti import SHRINKAGE_FLOOR as SHRINKAGE_FLOOR
from .ncti import SHRINKAGE_TOP as SHRINKAGE_TOP
from .ncti import TOL as TOL
from .ncti import ReferenceComponents as ReferenceComponents
from .ncti import ReferenceResult as ReferenceResult
from .ncti import lda_eigen as lda_eigen
from .ncti import lda_svd as lda_svd
from .ncti import min_max as min_max
from .ncti import model_components as model_components
from .ncti import nuclear_norm as nuclear_norm
from .ncti import pca as pca
from .ncti import remap_labels as remap_labels
from .ncti import score_zoo as score_zoo
