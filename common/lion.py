"""
Lion: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms" (Algorithm 2). Found by a program search,
it keeps one momentum buffer instead of Adam's two and moves every coordinate by the same amount, +-lr: the update
is the sign of an interpolation between the momentum and the new gradient. With g_t the gradient, m the momentum,
lr the learning rate and wd the weight decay:

    c_t = beta1 * m_{t-1} + (1 - beta1) * g_t           # interpolate (beta1 = 0.9)
    theta_t = theta_{t-1} - lr * (sign(c_t) + wd * theta_{t-1})   # signed step, decoupled weight decay
    m_t = beta2 * m_{t-1} + (1 - beta2) * g_t           # then update the momentum, more slowly (beta2 = 0.99)

Since sign() gives every coordinate a step of size lr, the update has a larger norm than Adam's: the paper uses a
learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger, so that lr * wd stays about the same.
"""

import torch


class Lion(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas {betas} must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m, g = state["exp_avg"], p.grad
                c = m.mul(beta1).add_(g, alpha=1 - beta1)  # c_t
                p.mul_(1 - lr * wd)  # decoupled weight decay, with theta_{t-1}
                p.add_(c.sign_(), alpha=-lr)
                m.mul_(beta2).add_(g, alpha=1 - beta2)  # m_t
        return loss
