"""vae.train.bench: FLOP counts in closed form, the HLO reader and the step profile."""

import jax
import jax.numpy as jnp
import pytest

from vae.train import bench

HLO = """
%fused_computation.3 (param_0: f32[20,784], param_1: f32[784,200]) -> f32[20,200] {
  %param_0 = f32[20,784]{1,0} parameter(0)
  %param_1 = f32[784,200]{1,0} parameter(1)
  ROOT %dot.9 = f32[20,200]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.6 (param_0.1: f32[425284]) -> f32[1] {
  %param_0.1 = f32[425284]{0} parameter(0)
  ROOT %reduce.2 = f32[1]{0} reduce(%param_0.1, %c), dimensions={0}, to_apply=%add
}

%fused_computation.7 (param_0.2: f32[1,200,784]) -> f32[1,200,784] {
  %param_0.2 = f32[1,200,784]{2,1,0} parameter(0)
  ROOT %multiply.1 = f32[1,200,784]{2,1,0} multiply(%param_0.2, %param_0.2)
}

ENTRY %main.1 (a: f32[20,784]) -> f32[1,200] {
  %ynn_fusion.3 = f32[20,200]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.3, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %ynn_fusion.6 = f32[1]{0} fusion(%p), kind=kCustom, calls=%fused_computation.6, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %dot_general.6 = f32[200,784]{1,0} dot(%x, %dy), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  %multiply_add_fusion = f32[1,200,784]{2,1,0} fusion(%p), kind=kLoop, calls=%fused_computation.7
  %while.4 = (s32[], u32[1,20,784]{2,1,0}, /*index=2*/u32[4]{0}) while(%t), condition=%c, body=%b
  ROOT %copy.1 = f32[1,200]{1,0} copy(%q)
}
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
  # A YNNPACK kernel without a product (a sum) is not counted as a product.
  assert kinds["ynn_fusion.6"] == ("YNNPACK fusion", "f32[1]")
  # Instructions inside a fusion are part of it, not operations of their own.
  assert not {"dot.9", "reduce.2", "multiply.1", "param_0"} & set(kinds)


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
