"""Platform policies: every platform-specific choice of the engine, in one place.

The LAMB math (:mod:`lamb_optax._src.kernels`) and the storage layout
(:mod:`lamb_optax._src.layout`) are the same on every platform, so a state
saved on one platform restores on any other. What differs is how XLA is led
to compile the same math well, and only that lives here, as a :class:`Policy`
object that the engine receives explicitly. :func:`per_platform` picks one
when the step is lowered (``jax.lax.platform_dependent``): XLA:CPU gets
:data:`CPU`, GPUs and TPUs get :data:`ACCELERATOR`. ``lamb(..., policy=...)``
fixes one instead (benchmarks and tests do, to measure or check a policy on
any machine).

Why each XLA:CPU guard exists (measured with ``benchmarks/step_bench.py`` and
``benchmarks/xla_cpu_notes.py``; numbers in the README):

* ``quick_sums_from``: XLA:CPU runs a single-output ``jnp.sum`` of an
  expression as one vectorized library kernel, but the variadic reduction of
  :func:`kernels.safe_norms` as scalar code, compute-bound when the expression
  holds Adam's division and square root. Leaves this large take one plain sum
  of squares per array, and only where one is out of range (inf, or below
  ``2**-60``, zero included) does a ``lax.cond`` run the safe sums: 18.0
  instead of 31.9 ms for the norm pass of a 16M leaf. Smaller leaves skip it:
  a ``cond`` per leaf costs compile time that their short reductions do not
  repay.
* ``row_split``: XLA:CPU runs a reduction as one sequential loop per output,
  on one core and (in float32, over 2**17 elements) about 1e-4 off; summed in
  up to 256 rows first, it runs on all cores and the error stays at the
  rounding of the longer run (:func:`kernels.summation_rows`).
* ``own_scalars``: XLA merges equal broadcasts across leaves, and a broadcast
  that a library sum shares with another kernel is stored as a full array;
  each leaf's reduction gets scalars of its own (behind an optimization
  barrier) so none is shared.
* ``pass2_barrier``: the update pass recomputes ``u`` from ``m'``, ``v'`` and
  ``w`` instead of reading a stored ``u``; the barrier stops XLA's common
  subexpression elimination from merging the two recomputations into one
  stored array (one temporary the size of the leaf). Optimization barriers
  launch nothing on GPUs, so the accelerator policy keeps it.

The accelerator policy drops the first three: XLA:GPU's reduction emitter is
parallel by itself, and each extra scalar kernel or split is a kernel launch.
It has not been measured against the alternatives on a GPU yet (the README's
GPU section says what has been).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import jax

from lamb_optax._src import kernels

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Policy:
  """How the engine lowers the LAMB step for one kind of platform (the math is the same).

  Attributes:
    quick_sums_from: leaves (single-ratio blocks) of at least this many
      elements take plain sums of squares, with the overflow-safe sums only
      where those are out of range; None: always the safe sums.
    row_split: reductions over 2**16 elements and more are summed in rows
      first (:func:`kernels.summation_rows`).
    own_scalars: each leaf's norm reduction gets scalars of its own.
    pass2_barrier: an optimization barrier between the norm pass and the update
      pass of each leaf.
    cut_below: packed leaves under this many elements get their updates cut out
      of the packed buffer by variadic reductions (so the per-leaf kernels that
      consume them are identical and compile once); larger ones as slices.
    ordered_buckets: packed buckets run one after another, so temporaries stay
      about 2x one bucket instead of 2x every packed leaf.

  Examples:
    >>> import lamb_optax
    >>> lamb_optax.Policy.for_platform("gpu") == lamb_optax.Policy.for_platform("tpu")
    True
    >>> lamb_optax.Policy.for_platform("cpu").quick_sums_from
    65536
  """

  quick_sums_from: Optional[int] = None
  row_split: bool = False
  own_scalars: bool = False
  pass2_barrier: bool = True
  cut_below: int = 2**16
  ordered_buckets: bool = True

  @staticmethod
  def for_platform(platform: str) -> Policy:
    """The policy :func:`per_platform` picks for ``platform`` ('cpu', 'gpu', 'cuda', 'tpu', ...)."""
    return CPU if platform == "cpu" else ACCELERATOR

  def rows(self, size: int) -> int:
    """How many rows a reduction over ``size`` elements is split into (1: none)."""
    return kernels.summation_rows(size) if self.row_split else 1


CPU = Policy(quick_sums_from=2**16, row_split=True, own_scalars=True)
ACCELERATOR = Policy()


def _concrete_platform(leaves: list[Any]) -> Optional[str]:
  """The platform of concrete jax arrays (an eager call); None inside a trace or if mixed."""
  platforms = set()
  for x in leaves:
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
      return None
    platforms |= {d.platform for d in x.devices()}
  return platforms.pop() if len(platforms) == 1 else None


def per_platform(run: Callable[[Policy], T], policy: Optional[Policy], arrays: Any) -> T:
  """``run(policy)``, or with no policy given, ``run`` with the policy of the platform.

  Inside a trace (``jax.jit``) the choice is made when the step is lowered,
  through ``jax.lax.platform_dependent``: ``jit(...).lower(...)`` for CPU keeps
  only the CPU branch, ``.trace(...).lower(lowering_platforms=('cuda',))`` only
  the accelerator's, whatever machine traces it. Called eagerly on arrays of
  one platform, it runs that platform's policy directly.
  """
  if policy is not None:
    return run(policy)
  platform = _concrete_platform(jax.tree.leaves(arrays))
  if platform is not None:
    return run(Policy.for_platform(platform))
  return jax.lax.platform_dependent(cpu=lambda: run(CPU), default=lambda: run(ACCELERATOR))
