"""The dense layer of every network, ``x @ kernel + bias`` with flax's
parameter names and initialisers, whose parameter gradients do not depend on
how many sweep members are trained at once: the reproducibility kit.

Member-count independence. A sweep vmaps the training step over a member
axis; a standalone run is the same program with a member axis of one,
which XLA squeezes away. Forward products and input gradients then give
every member the bits of its standalone run, but the parameter gradients
(products contracted over the batch rows) do not: XLA orients and blocks
the batched product differently from the squeezed one (measured on an
AVX2 CPU: last-bit differences that training amplifies to 0.1 nats). So
the two parameter-gradient products below are sequential_vmap functions:
under vmap they run as a loop over members of the very product a
standalone run computes, and a member's gradients are its standalone
run's, bit for bit, on any CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def member_by_member(f):
  """``f`` whose vmap is ``f`` applied to each member in turn, unrolled: M
  separate calls of the unbatched ``f``, stacked (a ``lax.map`` loop would
  cost a loop per product and step; M is small and static)."""
  f = jax.custom_batching.custom_vmap(f)

  @f.def_vmap
  def rule(axis_size, in_batched, *args):
    outs = [f(*(a[i] if batched else a for a, batched in zip(args, in_batched)))
            for i in range(axis_size)]
    return jnp.stack(outs), True

  return f


@member_by_member
def rows_product(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a^T b`` over rows, ``[n, p]``, ``[n, q]`` -> ``[p, q]``: the kernel
  gradient of ``a @ kernel`` for output cotangents ``b``. Vmapped, a loop
  of this product (see the comment above)."""
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())))


@member_by_member
def transposed_rows_product(a: jax.Array, b: jax.Array) -> jax.Array:
  """:func:`rows_product` with ``a`` transposed first (``a^T`` materialised,
  then a product contracted over its last axis): the portable numerics
  mode's form. XLA's CPU backend emits a product of that canonical layout
  itself (``vae.numerics``: LLVM IR tiles, capped at AVX), so its summation
  order is fixed by the program; contracted over the rows directly, it is
  a library call whose kernels and blocking depend on the processor."""
  return jnp.transpose(a) @ b


@member_by_member
def ones_product(ones: jax.Array, b: jax.Array) -> jax.Array:
  """``ones [1, n] @ b [n, q]`` -> ``[1, q]``: the bias gradient (a sum over
  rows as a product). Vmapped, a loop of this product."""
  return jax.lax.dot_general(ones, b, (((1,), (0,)), ((), ())))


@jax.custom_vjp
def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x [..., in] @ kernel [in, out]``, whose kernel gradient is
  :func:`rows_product` (member-count independent under vmap)."""
  return x @ kernel


def _matmul_fwd(x, kernel):
  return x @ kernel, (x, kernel)


def _matmul_bwd(residuals, dy):
  x, kernel = residuals
  dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))
  dkernel = rows_product(x.reshape(-1, x.shape[-1]),
                         dy.reshape(-1, dy.shape[-1]))
  return dx, dkernel


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def portable_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """:func:`matmul` in the portable numerics mode's form: every product of
  the forward and backward pass is ``a @ b`` with both operands row-major
  and contracted over ``a``'s last and ``b``'s first axis (transposes
  materialised: ``dy @ kernel^T`` and :func:`transposed_rows_product`), the
  one layout XLA's CPU backend emits as its own tiled code. Contracted over
  other axes, XLA hands a product to a library whose kernels and blocking
  depend on the processor."""
  return x @ kernel


def _portable_matmul_bwd(residuals, dy):
  x, kernel = residuals
  dx = dy @ jnp.transpose(kernel)  # kernel^T materialised: a canonical product
  dkernel = transposed_rows_product(x.reshape(-1, x.shape[-1]),
                                    dy.reshape(-1, dy.shape[-1]))
  return dx, dkernel


portable_matmul.defvjp(_matmul_fwd, _portable_matmul_bwd)


@jax.custom_vjp
def bias_add(y: jax.Array, bias: jax.Array) -> jax.Array:
  """``y + bias`` whose bias gradient is a matrix product.

  Autodiff's bias gradient is a sum over the batch, and XLA emits that
  reduction differently for different numbers of vmapped sweep members (and
  fuses it with the element-wise ops that produce ``dy``, rounding them
  differently), so a member would not match its standalone run to the bit.
  Here it is ``ones [1, n] @ dy [n, F]`` (:func:`ones_product`), with the
  ones derived from the bias itself (NaN if the bias is not finite, when the
  step is non-finite anyway).
  """
  return y + bias


def _bias_add_fwd(y, bias):
  return y + bias, bias[:1]


def _bias_add_bwd(bias_head, dy):
  rows = dy.reshape(-1, dy.shape[-1])
  one = bias_head * 0.0 + 1.0
  ones = jnp.broadcast_to(one[None, :], (1, rows.shape[0]))
  return dy, ones_product(ones, rows)[0]


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


class Dense(nn.Module):
  """``x @ kernel + bias`` (flax's parameter names and initialisers), with
  the member-count-independent gradients of :func:`matmul` and
  :func:`bias_add`; with ``portable_products``, those of
  :func:`portable_matmul` (the same parameters and the same values up to
  rounding, in the products' portable form)."""

  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  portable_products: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", self.bias_init, (self.features,))
    product = portable_matmul if self.portable_products else matmul
    return bias_add(product(x, kernel), bias)
