//! Jacobian-vector products: forward-mode by hand for our networks, and a generic
//! double-backward reference for anything built from tch ops.

use tch::Tensor;

/// A network that can push a tangent through its forward pass (forward-mode AD).
///
/// For `y = f(x)`, returns `(y, J_f(x)·dx)` in one pass, at roughly twice the cost of a
/// forward. The MeanFlow target needs `du/dt = ∂_z u·v + ∂_t u`, i.e. a JVP of the actor along
/// the input tangent `(ds, dz, dt, d(t−r)) = (0, v, 1, 1)`.
pub trait ForwardJvp {
    /// Output and tangent; both carry autograd graphs back to the parameters.
    fn forward_jvp(&self, x: &Tensor, dx: &Tensor) -> (Tensor, Tensor);

    /// Output with its graph, and the tangent computed without one (for stop-gradient
    /// targets). The default detaches the result of [`ForwardJvp::forward_jvp`].
    fn forward_jvp_sg(&self, x: &Tensor, dx: &Tensor) -> (Tensor, Tensor) {
        let (y, dy) = self.forward_jvp(x, dx);
        (y, dy.detach())
    }
}

/// Exact JVP of any differentiable `f` at `x` along `v`, by double backward: with a dummy
/// cotangent `w`, `g(w) = (∂f/∂x)ᵀ·w` is linear in `w`, and `∂(g·v)/∂w = J·v`.
///
/// About 3.3× a forward on our MLPs (see `mvp bench jvp`); kept as the reference that the
/// forward-mode [`ForwardJvp`] implementations are tested against, and for networks
/// without one.
pub fn jvp_autograd(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
    let x = x.detach().set_requires_grad(true);
    let y = f(&x);
    let w = y.zeros_like().set_requires_grad(true);
    let g = Tensor::run_backward(&[(&y * &w).sum(y.kind())], &[&x], true, true);
    let jv = Tensor::run_backward(&[(&g[0] * v).sum(y.kind())], &[&w], true, false);
    (y, jv[0].shallow_clone())
}
