"""
Train a small GPT language model for a fixed wall-clock budget.

This is the one file the research agent edits. Data, tokenizer, time budget and the
final evaluation (validation bits per byte) belong to the frozen harness, which this
script reaches only through `autoresearch.harness.api`. The last thing the script does
is hand the trained model to `submit`, which evaluates it and prints the summary block.

Run: python train.py
"""
import gc
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------
# Hyperparameters (simple literals: tools edit them in place)

# Model shape
DEPTH = 8  # number of transformer blocks
ASPECT_RATIO = 64  # width per unit of depth: model_dim = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = 128  # channels per attention head; n_head = model_dim / HEAD_DIM
WINDOW_PATTERN = "SSSL"  # attention window per layer, cycled: S = half context, L = full (last layer: L)

# Batch
TOTAL_BATCH_SIZE = 524288  # tokens per optimizer step; gradient accumulation makes up the rest
DEVICE_BATCH_SIZE = 128  # rows per forward/backward pass, each MAX_SEQ_LEN tokens

# Optimizer
EMBEDDING_LR = 0.6  # AdamW LR of token and value embeddings (scaled by 1/sqrt(model_dim/768))
UNEMBEDDING_LR = 0.004  # AdamW LR of the output head (scaled by 1/sqrt(model_dim/768))
MATRIX_LR = 0.04  # Muon LR of the 2-D block matrices (scaled by sqrt(max(1, rows/cols)))
SCALAR_LR = 0.5  # AdamW LR of the per-layer mixing scalars (resid scalars get 1/100 of it)
WEIGHT_DECAY = 0.2  # cautious weight decay of Muon matrices, decays linearly to 0 over the run
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)

# Schedule, as fractions of the time budget
WARMUP_RATIO = 0.0  # fraction of the budget spent ramping the LR up from 0
WARMDOWN_RATIO = 0.5  # final fraction of the budget over which the LR decays
FINAL_LR_FRAC = 0.0  # LR multiplier reached at the end of warmdown

# ---------------------------------------------------------------------------------------
# Model

LOGIT_SOFTCAP = 15.0  # logits are squashed into (-15, 15) by tanh
VE_GATE_CHANNELS = 32  # leading channels of the block input that drive the value-embedding gate
ROTARY_BASE = 10000.0  # rotary frequency base: channel pair i turns by position * base^(-2i/head_dim)

_flash_attn = None  # FlashAttention-3 interface, loaded in main() on Hopper GPUs only


@dataclass
class GPTConfig:
    vocab_size: int
    sequence_len: int
    n_layer: int
    n_head: int
    head_dim: int
    window_pattern: str = "SSSL"

    @property
    def n_embd(self) -> int:
        return self.n_head * self.head_dim


def config_from_constants(vocab_size: int, sequence_len: int) -> GPTConfig:
    model_dim = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    return GPTConfig(vocab_size, sequence_len, DEPTH, model_dim // HEAD_DIM, HEAD_DIM, WINDOW_PATTERN)


def norm(x):
    # weightless RMSNorm: nothing for the optimizer to tune, one fused kernel
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer: int, n_layer: int) -> bool:
    # alternating layers, aligned so that the last layer always has one
    return layer % 2 == (n_layer - 1) % 2


def window_sizes(config: GPTConfig) -> list[int]:
    sizes = {"L": config.sequence_len, "S": config.sequence_len // 2}
    pattern = config.window_pattern.upper()
    assert pattern and set(pattern) <= set(sizes), f"WINDOW_PATTERN may only use S and L, got {pattern!r}"
    windows = [sizes[pattern[i % len(pattern)]] for i in range(config.n_layer)]
    windows[-1] = sizes["L"]  # the last layer sees the whole context
    return windows


def rotary_tables(seq_len: int, head_dim: int):
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]  # [1, T, 1, head_dim/2]


def apply_rotary(x, cos, sin):
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


def attend(q, k, v, window: int, training: bool = False):
    """Causal attention over [B, T, H, D] tensors; each query sees itself and `window` earlier keys."""
    # FA3 only while training: evaluation and export use standard ops the exported graph can hold
    if training and _flash_attn is not None and q.is_cuda:
        return _flash_attn.flash_attn_func(q, k, v, causal=True, window_size=(window, 0))
    T = q.size(1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if window >= T - 1:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        # mask built from shapes only, so the graph exports without data-dependent control flow
        pos = torch.arange(T, device=q.device)
        dist = pos[:, None] - pos[None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=(dist >= 0) & (dist <= window))
    return y.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        dim = config.n_embd
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        has_ve = has_value_embedding(layer, config.n_layer)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_head, bias=False) if has_ve else None

    def forward(self, x, ve, cos, sin, window: int):
        B, T, C = x.shape
        shape = (B, T, self.n_head, self.head_dim)
        q, k, v = self.c_q(x).view(shape), self.c_k(x).view(shape), self.c_v(x).view(shape)
        dtype = q.dtype  # the compute dtype (bf16 under autocast); keep q, k, v in it
        if ve is not None:
            # per-head gate in (0, 2), exactly 1 at init (zero weights): the value embedding
            # starts as a plain residual on V and each head learns how much it wants
            gate = 2.0 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))
            v = v + gate.unsqueeze(-1) * ve.view(shape)
        cos, sin = cos.to(dtype), sin.to(dtype)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        y = attend(q.to(dtype), k.to(dtype), v.to(dtype), window, self.training)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos, sin, window: int):
        x = x + self.attn(norm(x), ve, cos, sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        V, C, L = config.vocab_size, config.n_embd, config.n_layer
        self.wte = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(L))
        self.lm_head = nn.Linear(C, V, bias=False)
        # the stream entering block i is resid_lambdas[i] * x + x0_lambdas[i] * (embedding)
        self.resid_lambdas = nn.Parameter(torch.ones(L))
        self.x0_lambdas = nn.Parameter(torch.full((L,), 0.1))
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(V, C) for i in range(L) if has_value_embedding(i, L)}
        )
        self.windows = window_sizes(config)
        cos, sin = rotary_tables(config.sequence_len, config.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self):
        C = self.config.n_embd
        bound = math.sqrt(3.0) / math.sqrt(C)  # uniform with std 1/sqrt(C)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            attn = block.attn
            for w in (attn.c_q.weight, attn.c_k.weight, attn.c_v.weight, block.mlp.c_fc.weight):
                nn.init.uniform_(w, -bound, bound)
            # zero output projections: every block starts as the identity on the residual stream
            nn.init.zeros_(attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if attn.ve_gate is not None:
                nn.init.zeros_(attn.ve_gate.weight)
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            key = str(i)
            ve = self.value_embeds[key](idx) if key in self.value_embeds else None
            x = block(x, ve, cos, sin, self.windows[i])
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight used in a matmul, plus attention scores."""
        embedding = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul_params = self.num_params() - embedding - scalars
        T, width = self.config.sequence_len, self.config.n_embd
        attention = sum(12 * width * min(w + 1, T) for w in self.windows)
        return 6 * matmul_params + attention


# ---------------------------------------------------------------------------------------
# Optimizer: Muon for block matrices, AdamW for everything else

# Polar Express (Amsel et al., 2025): per-iteration coefficients (a, b, c) of the odd
# polynomial a*X + b*X^3 + c*X^5 that drive every singular value towards 1 quickly
# and stay stable in bf16.
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(G, steps: int = 5):
    """Approximate polar factor U V^T of a (batch of) matrices G = U S V^T."""
    # bf16 on GPUs; CPUs without native bf16 matmul run it about 10x slower than fp32
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide form so that X @ X^T is the small Gram matrix
        X = X.mT
    # the 1.02 margin keeps the largest singular value safely below 1 despite bf16 rounding
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz-like iterations, with NorMuon row scaling.

    Parameters of one shape are stacked so that each shape costs one batched
    orthogonalisation per step. Per-group hyperparameters: lr, momentum, beta2, weight_decay.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, beta2=0.95, weight_decay=0.0):
        params = list(params)
        assert all(p.ndim == 2 for p in params), "Muon only handles 2-D matrices"
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [{"params": [p for p in params if tuple(p.shape) == s]} for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, beta2=beta2, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            rows, cols = params[0].shape
            state = self.state[params[0]]  # one state per shape group, kept on its first member
            grads = torch.stack([p.grad for p in params]).float()
            # NorMuon keeps one second moment per row of a tall matrix, per column of a wide one
            reduce_dim = -1 if rows >= cols else -2
            if not state:
                state["momentum"] = torch.zeros_like(grads)
                state["second"] = torch.zeros_like(grads.mean(dim=reduce_dim, keepdim=True))
            mom = state["momentum"]
            mom.lerp_(grads, 1 - group["momentum"])
            update = grads.lerp_(mom, group["momentum"])  # Nesterov look-ahead
            update = orthogonalize(update).float()
            # NorMuon: equalise the update's scale across neurons with an EMA of its
            # per-neuron mean square, then restore the overall norm of the orthogonalised update
            sq = update.square().mean(dim=reduce_dim, keepdim=True)
            state["second"].lerp_(sq, 1 - group["beta2"])
            scale = state["second"].clamp_min(1e-10).rsqrt()
            norm_before = sq.sum(dim=(-2, -1), keepdim=True).sqrt()
            norm_after = (sq * scale.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
            update = update * scale * (norm_before / norm_after.clamp_min(1e-10))
            # an orthogonal update has per-entry RMS 1/sqrt(max(rows, cols)); this makes it
            # 1/sqrt(cols) for every shape
            lr = group["lr"] * math.sqrt(max(1.0, rows / cols))
            weights = torch.stack(params)
            # cautious weight decay: only shrink coordinates the update is already moving towards 0
            decay = (update * weights >= 0).to(weights.dtype) * weights
            weights.sub_(lr * update + lr * group["weight_decay"] * decay)
            for p, w in zip(params, weights.unbind(0)):
                p.copy_(w)


def build_optimizers(model: GPT):
    """AdamW for embeddings, head and scalars; Muon for every 2-D matrix inside the blocks."""
    dim_scale = (model.config.n_embd / 768) ** -0.5  # the LRs were tuned at width 768
    adam_groups = [
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * dim_scale),
        dict(params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * dim_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * dim_scale),
        dict(params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(params=[model.x0_lambdas], lr=SCALAR_LR),
    ]
    adamw = torch.optim.AdamW(adam_groups, betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(model.blocks.parameters(), lr=MATRIX_LR, momentum=0.95, weight_decay=WEIGHT_DECAY)
    for opt in (adamw, muon):
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return adamw, muon


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = max(0.0, 1.0 - progress) / WARMDOWN_RATIO
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * remaining


def muon_momentum(step: int) -> float:
    frac = min(step / 300, 1.0)  # 0.85 -> 0.95 over the first 300 steps
    return 0.85 + 0.10 * frac


# ---------------------------------------------------------------------------------------
# Device

# dense bf16 peak FLOP/s by device name; the first matching substring wins
PEAK_FLOPS = (
    ("H100", 989.5e12),
    ("H200", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
)


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_fast_bf16() -> bool:
    # without native bf16 instructions (e.g. AVX2-only CPUs) bf16 matmuls are ~10x slower than fp32
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def peak_flops(device: str):
    if device != "cuda":
        return None  # unknown for CPUs and Apple GPUs: MFU is reported as 0
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def load_flash_attention():
    """FlashAttention-3 kernels on Hopper when the `kernels` package can provide them."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return None
    try:
        from kernels import get_kernel

        return get_kernel("varunneal/flash-attention-3").flash_attn_interface
    except Exception as exc:  # missing package or no network: SDPA is a fine fallback
        print(f"FlashAttention-3 unavailable ({exc}); using scaled_dot_product_attention")
        return None


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    except ImportError:
        return 0.0


# ---------------------------------------------------------------------------------------
# Training


def main():
    global _flash_attn
    # the harness is imported here so that the model above can be imported without a session
    from autoresearch.harness.api import (
        MAX_SEQ_LEN, TIME_BUDGET, WARMUP_STEPS, VOCAB_SIZE, SEED, get_tokenizer, make_dataloader, log, submit,
    )

    torch.manual_seed(SEED)
    device = pick_device()
    if device == "cuda":
        torch.cuda.manual_seed(SEED)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        _flash_attn = load_flash_attention()
    # compile fuses the many small elementwise ops (worth it on CPU too); not supported on MPS
    use_compile = device in ("cuda", "cpu")
    use_bf16 = device == "cuda" or (device == "cpu" and cpu_has_fast_bf16())
    autocast = torch.autocast(device, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    tokenizer = get_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    assert vocab_size == VOCAB_SIZE, f"tokenizer has {vocab_size} tokens, harness says {VOCAB_SIZE}"
    config = config_from_constants(vocab_size, MAX_SEQ_LEN)
    model = GPT(config).to(device)
    model.init_weights()
    num_params = model.num_params()
    flops_per_token = model.flops_per_token()
    peak = peak_flops(device)
    flash = _flash_attn is not None
    print(f"device: {device} | compile: {use_compile} | bf16: {use_bf16} | flash-attention-3: {flash}")
    print(f"model: {config} | width {config.n_embd} | windows {model.windows}")
    print(f"parameters: {num_params:,} | FLOPs/token: {flops_per_token:.3e}")

    tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, (
        f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of "
        f"DEVICE_BATCH_SIZE * MAX_SEQ_LEN ({tokens_per_pass})"
    )
    grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_pass
    print(f"tokens/step: {TOTAL_BATCH_SIZE:,} | gradient accumulation: {grad_accum_steps}")

    adamw, muon = build_optimizers(model)
    train_model = torch.compile(model) if use_compile else model
    train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device)
    x, y, epoch = next(train_loader)

    step, training_time, counted_tokens, smooth_loss = 0, 0.0, 0, 0.0
    while True:
        t0 = time.time()
        for _ in range(grad_accum_steps):
            with autocast:
                loss = train_model(x, y)
            train_loss = loss.detach()
            (loss / grad_accum_steps).backward()
            x, y, epoch = next(train_loader)  # fetched while the device still works
        progress = min(training_time / TIME_BUDGET, 1.0)
        lrm = lr_multiplier(progress)
        for opt in (adamw, muon):
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        for group in muon.param_groups:
            group["momentum"] = muon_momentum(step)
            group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        loss_value = train_loss.item()  # waits for the device, so dt below is the true step time
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"step {step:05d} | loss {loss_value}: diverged, aborting")
            sys.exit(1)
        dt = time.time() - t0
        if step >= WARMUP_STEPS:  # the first steps include compilation and warm-up: not counted
            training_time += dt
            counted_tokens += TOTAL_BATCH_SIZE

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        shown_loss = smooth_loss / (1 - 0.9 ** (step + 1))  # debiased EMA
        tok_per_sec = TOTAL_BATCH_SIZE / dt
        mfu = 100 * flops_per_token * tok_per_sec / peak if peak else 0.0
        remaining = max(0.0, TIME_BUDGET - training_time)
        print(
            f"step {step:05d} ({100 * progress:.1f}%) | loss: {shown_loss:.6f} | lrm: {lrm:.2f} | "
            f"dt: {dt * 1000:.0f}ms | tok/sec: {tok_per_sec:,.0f} | mfu: {mfu:.1f}% | "
            f"epoch: {epoch} | remaining: {remaining:.0f}s",
            flush=True,
        )
        log(step, loss=loss_value, lr_mult=lrm, tok_per_sec=tok_per_sec, mfu=mfu, progress=progress)

        if step == 0:  # Python's GC pauses show up as slow steps; the live set is stable now
            gc.collect()
            gc.freeze()
            gc.disable()
        step += 1
        if step >= WARMUP_STEPS and training_time >= TIME_BUDGET:
            break

    mfu_percent = 100 * flops_per_token * counted_tokens / training_time / peak if peak else 0.0
    model.eval()
    submit(
        model,
        num_steps=step,
        training_seconds=training_time,
        peak_vram_mb=peak_memory_mb(device),
        mfu_percent=mfu_percent,
        num_params_M=num_params / 1e6,
        depth=DEPTH,
    )


if __name__ == "__main__":
    main()
