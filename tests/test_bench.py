"""vae.bench: FLOP counts in closed form, the HLO reader and the step profile."""

import jax
import jax.numpy as jnp
import pytest

from vae import bench

HLO = """
  %ynn_fusion.3 = f32[20,200]{1,0} fusion(%a, %b), kind=kCustom, calls=%f, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot_general.6 = f32[200,784]{1,0} dot(%x, %dy), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  %multiply_add_fusion = f32[1,200,784]{2,1,0} fusion(%p, %g), kind=kLoop, calls=%g2
  %while.4 = (s32[], u32[1,20,784]{2,1,0}, /*index=2*/u32[4]{0}) while(%t), condition=%c, body=%b
  ROOT %copy.1 = f32[1,200]{1,0} copy(%q)
"""


def test_dot_flops_counts_two_per_multiply_add():
  a = jax.ShapeDtypeStruct((20, 784), jnp.float32)
  w = jax.ShapeDtypeStruct((784, 200), jnp.float32)
  nn = {"dimension_numbers": (((1,), (0,)), ((), ()))}
  assert bench.dot_flops(a, w, nn) == 2 * 20 * 784 * 200
  # The kernel gradient x^T dy, contracted over the batch rows.
  dy = jax.ShapeDtypeStruct((20, 200), jnp.float32)
  tn = {"dimension_numbers": (((0,), (0,)), ((), ()))}
  assert bench.dot_flops(a, dy, tn) == 2 * 784 * 20 * 200
  # A batched product: members x rows x out.
  am = jax.ShapeDtypeStruct((3, 20, 784), jnp.float32)
  wm = jax.ShapeDtypeStruct((3, 784, 200), jnp.float32)
  batched = {"dimension_numbers": (((2,), (1,)), ((0,), (0,)))}
  assert bench.dot_flops(am, wm, batched) == 3 * 2 * 20 * 784 * 200


def test_hlo_op_kinds_names_products_fusions_loops_and_copies():
  kinds = bench.hlo_op_kinds(HLO)
  assert kinds["ynn_fusion.3"] == ("product (YNNPACK)", "f32[20,200]")
  assert kinds["dot_general.6"] == ("product (XLA)", "f32[200,784]")
  assert kinds["multiply_add_fusion"] == ("element-wise fusion", "f32[1,200,784]")
  assert kinds["while.4"] == ("loop", "(s32[], u32[1,20,784], u32[4])")
  assert kinds["copy.1"] == ("copy", "f32[1,200]")


def test_step_profile_times_every_product_of_the_step_once_per_step():
  config = bench.bench_config((16,), 2, 10)
  profile = bench.step_profile(config, num_examples=200, epochs=1, top=100)
  assert profile["steps_profiled"] == 20
  products = [op for op in profile["ops"] if op["kind"].startswith("product")]
  # Every product of the step (forward, input and parameter gradients) is
  # one operation that runs once per step.
  assert products and all(op["calls_per_step"] == 1.0 for op in products)
  assert profile["ops"] == sorted(profile["ops"], key=lambda op: -op["us_per_step"])
  assert sum(profile["by_kind"].values()) == pytest.approx(profile["ops_us_per_step"])
  assert profile["xla_cpu_threads"] >= 1
