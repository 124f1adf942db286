"""
Sophia-G: Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training"
(ICLR 2024), Algorithm 3 with the Gauss-Newton-Bartlett estimator of Algorithm 2.

Sophia divides the momentum by an estimate h of the Hessian's diagonal (curvature), so flat directions take larger
steps and sharp ones smaller, and clips every coordinate of the result to [-1, 1], which bounds the step where the
estimate is poor or the loss is not convex (there the update falls back to the sign of the momentum). h is
refreshed only every k steps and kept as an EMA: one more forward and backward, on the step's first micro-batch,
every k steps. With g_t the gradient, lr the learning rate, wd the weight decay, step t = 1, 2, ...:

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    if t mod k == 1:  h_t = beta2 * h_{t-k} + (1 - beta2) * h_hat_t         (h starts at 0)
    else:             h_t = h_{t-1}
    theta_t = theta_t - lr * wd * theta_t                                    (decoupled weight decay)
    theta_{t+1} = theta_t - lr * clip(m_t / max(gamma * h_t, eps), 1)       clip(z, 1) = max(min(z, 1), -1)

Gauss-Newton-Bartlett (Algorithm 2): draw labels y_hat from the model's own softmax on the batch, take the gradient
g_hat of the mean cross-entropy on those labels over the B predicted tokens, and h_hat = B * g_hat * g_hat. In
expectation over y_hat this is the diagonal of the Gauss-Newton matrix: the curvature of the loss, without
second derivatives. The authors' code writes the same update as clip(m / (rho * B * EMA(g_hat^2) + 1e-15), 1):
gamma is its rho. An earlier version of the paper wrote clip(m / max(h, eps), rho), the same up to rescaling lr.
"""

import torch
import torch.nn.functional as F


class SophiaG(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.965, 0.99), gamma=0.05, eps=1e-12, weight_decay=0.0):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas {betas} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay))

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["exp_avg"], state["hessian"] = torch.zeros_like(p), torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self, n):
        """h = beta2 * h + (1 - beta2) * h_hat, with h_hat = n * g_hat^2 and g_hat the gradients now in p.grad: those
        of the mean loss over n tokens on sampled labels (gauss_newton_bartlett below computes them)."""
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is not None:
                    self._state(p)["hessian"].mul_(beta2).add_(p.grad * p.grad * n, alpha=1 - beta2)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, gamma, eps = group["lr"], group["weight_decay"], group["gamma"], group["eps"]
            beta1 = group["betas"][0]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                m, h = state["exp_avg"], state["hessian"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                p.mul_(1 - lr * wd)
                p.add_((m / (gamma * h).clamp(min=eps)).clamp(-1, 1), alpha=-lr)
        return loss


def gauss_newton_bartlett(optimizer, model, x, y, autocast):
    """Refresh Sophia's Hessian estimate on the batch x (Algorithm 2): labels sampled from the model's own softmax,
    the mean cross-entropy on them over every position the model returns logits for, backward, h updated, gradients
    cleared. y is passed so that a model that changes its input for training (BERT's masking) sees what it sees in
    training; the model's own loss on y is not used. Under DDP the gradients are averaged over the processes, so B
    counts every process's tokens. No loss scaling: under fp16 the smallest g_hat may underflow to 0, which only
    makes the clip (a sign step) take over for those coordinates."""
    with autocast:
        logits = model(x, y)[0]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).reshape(-1, logits.size(-1))  # (B, V)
    y_hat = torch.distributions.Categorical(logits=logits.detach()).sample()
    F.cross_entropy(logits, y_hat).backward()
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    optimizer.update_hessian(logits.size(0) * world)
    optimizer.zero_grad(set_to_none=True)
