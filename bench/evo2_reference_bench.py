#!/usr/bin/env python3
"""Evo 2 reference benchmark: the `vortex` implementation on the CPU, for side-by-side
runs with `hyena score` on the same random-weight checkpoint and the same sequence.

What it measures
----------------
`run` scores one DNA sequence (byte tokens, as Evo 2's CharLevelTokenizer) with vortex's
`StripedHyena` in a fresh child process and reports, as one JSON object:

  build_s       constructing the model from the YAML config (vortex initialises every
                parameter randomly first; this is part of vortex's own load path)
  load_s        loading the `.pt` through vortex's `load_checkpoint` (torch.load with
                weights_only=True, mmap=True and io.BytesIO allow-listed, then
                `custom_load_state_dict`), plus, for --precision f32, `model.float()`
  forward_s     one full forward (logits of every position) under torch.inference_mode(),
                median over --repeat timed runs (after --warmup untimed ones)
  loglik_s      log_softmax (in float32) of the logits and the sum at the next tokens
  loglik_sum    sum over positions 0..L-2 of log p(x[i+1] | x[..i]) in nats
  peak_rss_gib  peak resident set of the child (ru_maxrss, RUSAGE_CHILDREN in the parent):
                start-up, model build, checkpoint load and the forward together
  rss_startup_gib, rss_after_load_gib, forward_peak_rss_gib
                resident set after importing torch and vortex (before the model exists),
                after loading, and the peak during scoring alone (Linux: the high-water mark
                is reset after loading through /proc/self/clear_refs; null where that is
                not possible). All include the start-up set (torch alone is about 0.5 GiB).

Precision:
  bf16  the model as vortex leaves a released checkpoint (`to_bfloat16_except_pr_lc`):
        every parameter bfloat16 except the LI `log_poles`/`residues` (float32) and the
        rotary `inv_freq` buffer (float32). The linear layers, MLPs and attention then run
        bf16 matmuls on the CPU; vortex itself computes the FIR convolutions and the FFT
        long convolutions in float32 and casts back.
  f32   the same loaded model with every parameter and buffer cast to float32.

CPU workarounds, in this process only (the installed packages are not edited):
  * an empty `flash_attn_2_cuda` module is put into sys.modules before vortex is imported
    (vortex.ops imports it unconditionally; nothing from it is used with
    use_flash_attn: False, where the attention is torch's scaled_dot_product_attention);
  * `torch.cuda.device` becomes a no-op context manager (vortex enters it while building
    blocks and in every Hyena block's forward);
  * the triton rotary kernel `apply_rotary_emb_qkv_` is replaced by vortex's own plain
    PyTorch `apply_rotary_emb_torch` (same cos/sin cache, non-interleaved);
  * the written config.yml has use_flash_attn, use_fp8_input_projections, use_flashfft,
    use_flash_depthwise, use_flash_rmsnorm and use_hc{s,m,l}_kernel off.
vortex.logging opens ./activations_debug.log when imported; it is imported from a
temporary directory so that no such file appears in the working directory.

Install (CPU only; no Transformer Engine, no flash-attn):

    pip install vtx==1.1.0 evo2==0.6.0 --no-deps
    pip install torch numpy einops safetensors pyyaml rich tqdm packaging

evo2 is not imported (its __init__ needs huggingface_hub); only its YAML configs are read
from the installed package directory.

Reproduce the side-by-side runs
-------------------------------
    # random weights of the released 1B architecture (about 2.2 GB) and a CPU config.yml
    python3 bench/evo2_reference_bench.py make-weights --preset evo2_1b_base \\
        --out runs/evo2-1b-random

    # vortex, bf16 and f32; each writes the scored sequence as FASTA
    python3 bench/evo2_reference_bench.py run --dir runs/evo2-1b-random --len 8192 \\
        --precision bf16 --threads 2 --fasta-out runs/evo2-1b-random/seq-8192.fa --json
    python3 bench/evo2_reference_bench.py run --dir runs/evo2-1b-random \\
        --fasta runs/evo2-1b-random/seq-8192.fa --precision f32 --threads 2 --json

    # hyena on the same directory (vortex YAML config plus .pt) and the same sequence;
    # hyena score sizes its pool from RAYON_NUM_THREADS, and /usr/bin/time -v gives its
    # peak RSS ("Maximum resident set size") to set beside peak_rss_gib
    RAYON_NUM_THREADS=2 /usr/bin/time -v hyena score --model runs/evo2-1b-random \\
        --fasta runs/evo2-1b-random/seq-8192.fa --json

    # torch's own matmul throughput, for "fraction of peak" figures
    python3 bench/evo2_reference_bench.py gemm-peak --threads 2 --n 2048

Sizes: evo2_1b_base 1.11 B parameters, a 2.2 GB file; the 7B presets (evo2_7b_base,
evo2_7b, evo2_7b_262k) 6.5-6.6 B parameters, about 13 GB; evo2_40b_base 40.3 B, about
81 GB. make-weights holds the bf16 tensors (about the file size) in memory until they
are saved, never an f32 copy of the model (each tensor is drawn in f32 row chunks of at
most 64 MiB). A `run` holds the model (bf16: about the file size; f32: twice that, so a
7B f32 run needs about 26 GB for the weights alone) and, while loading, touches the
pages of the mmapped file (they count in ru_maxrss; the kernel may reclaim them). During
the forward, vortex builds each LI filter as a float32 [D, 16, L] intermediate before
summing it to [D, L]: about 0.9 GiB (1B) or 2 GiB (7B) at L = 8192, growing with L.

`check-keys` builds vortex's model from a (reduced) config and checks that the key set and
shapes written by make-weights are exactly what vortex's loader expects, by loading them.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

PRESETS = {
    "evo2_1b_base": "evo2-1b-8k.yml",
    "evo2_7b_base": "evo2-7b-8k.yml",
    "evo2_7b": "evo2-7b-1m.yml",
    "evo2_7b_262k": "evo2-7b-262k.yml",
    "evo2_40b_base": "evo2-40b-8k.yml",
}

# Config flags that select GPU-only code paths in vortex; all off on the CPU.
CPU_FLAGS_OFF = (
    "use_flash_attn",
    "use_fp8_input_projections",
    "use_flashfft",
    "use_flash_depthwise",
    "use_flash_rmsnorm",
    "use_hcs_kernel",
    "use_hcm_kernel",
    "use_hcl_kernel",
)

GIB = 1024.0**3


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


def evo2_config_dir():
    spec = importlib.util.find_spec("evo2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the evo2 package is not installed: pip install vtx==1.1.0 evo2==0.6.0 --no-deps")
    return os.path.join(list(spec.submodule_search_locations)[0], "configs")


def preset_config(preset, layers=None, hidden=None):
    """The release YAML of `preset` as a dict, with the CPU flags off and optional
    reductions (first `layers` blocks of the release pattern, width `hidden`)."""
    import yaml

    with open(os.path.join(evo2_config_dir(), PRESETS[preset])) as f:
        cfg = yaml.safe_load(f)
    for flag in CPU_FLAGS_OFF:
        cfg[flag] = False
    if layers is not None:
        if layers < 1:
            sys.exit("--layers must be at least 1")
        cfg["num_layers"] = layers
        for key in ("hcs_layer_idxs", "hcm_layer_idxs", "hcl_layer_idxs", "attn_layer_idxs"):
            cfg[key] = [i for i in cfg[key] if i < layers]
    if hidden is not None:
        d0, d = cfg["hidden_size"], hidden
        head_dim = d0 // cfg["num_attention_heads"]
        if d % head_dim == 0:
            heads = d // head_dim
        else:
            heads = math.gcd(d, cfg["num_attention_heads"])
        if (d // heads) % 2:
            sys.exit(f"--hidden {d}: head size {d // heads} must be even (rotary)")
        cfg["hidden_size"] = d
        cfg["num_filters"] = d
        cfg["num_attention_heads"] = heads
        cfg["hcl_filter_groups"] = d
        for key in ("hcm_filter_groups", "hcs_filter_groups"):
            per_group = d0 // cfg[key]
            cfg[key] = d // per_group if d % per_group == 0 else math.gcd(d, cfg[key])
        cfg["inner_mlp_size"] = max(16, round(cfg["inner_mlp_size"] * d / d0 / 16) * 16)
    return cfg


def block_kind(cfg, i):
    for kind, key in (("hcs", "hcs_layer_idxs"), ("hcm", "hcm_layer_idxs"),
                      ("hcl", "hcl_layer_idxs"), ("attn", "attn_layer_idxs")):
        if i in cfg[key]:
            return kind
    raise ValueError(f"layer {i} is in none of the *_layer_idxs lists")


# --------------------------------------------------------------------------------------
# Random weights in the released-checkpoint layout
# --------------------------------------------------------------------------------------


def weight_specs(cfg):
    """(name, shape, dtype, init) for every tensor of the file, in state-dict order.
    init: ("normal", std, mean) | ("poles",) | ("inv_freq", base) | ("extra_state", n)."""
    D = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    F = cfg["inner_mlp_size"]
    S = cfg["state_size"]
    K = cfg["short_filter_length"]
    bf, f32 = "bfloat16", "float32"

    def lin(out_f, in_f):
        return (out_f, in_f), ("normal", 1.0 / math.sqrt(in_f), 0.0)

    # The embedding is tied to the output layer (logits = h @ E^T after the final RMSNorm),
    # so it gets the 1/sqrt(fan_in) scale of the other linears: logits of std about 1, a
    # log-likelihood near that of a plausible model rather than of one with huge logits.
    # (The input side does not care: every block starts with an RMSNorm.)
    specs = [("embedding_layer.weight", (cfg["vocab_size"], D), bf, ("normal", 1.0 / math.sqrt(D), 0.0))]
    norm = ((D,), bf, ("normal", 0.1, 1.0))
    for i in range(cfg["num_layers"]):
        p = f"blocks.{i}."
        kind = block_kind(cfg, i)
        specs.append((p + "pre_norm.scale",) + norm)
        specs.append((p + "post_norm.scale",) + norm)
        if kind == "attn":
            # Random rows, so the file's per-head [q_h | k_h | v_h] row order needs no
            # permutation here; vortex regroups the rows at load (column_split: True).
            shape, init = lin(3 * D, D)
            specs.append((p + "inner_mha_cls.Wqkv.weight", shape, bf, init))
            if cfg.get("qkv_proj_bias", False):
                specs.append((p + "inner_mha_cls.Wqkv.bias", (3 * D,), bf, ("normal", 0.1, 0.0)))
            shape, init = lin(D, D)
            specs.append((p + "inner_mha_cls.out_proj.weight", shape, bf, init))
            if cfg.get("mha_out_proj_bias", True):
                specs.append((p + "inner_mha_cls.out_proj.bias", (D,), bf, ("normal", 0.1, 0.0)))
            specs.append((p + "inner_mha_cls.rotary_emb.inv_freq", (D // H // 2,), f32,
                          ("inv_freq", float(cfg.get("rotary_emb_base", 1000000)))))
            specs.append((p + "mixer.dense._extra_state", None, None, ("extra_state", D)))
        else:
            specs.append((p + "filter.short_filter_weight", (3 * D, 1, K), bf, ("normal", 0.3, 0.0)))
            if cfg.get("short_filter_bias", False):
                specs.append((p + "filter.short_filter_bias", (3 * D,), bf, ("normal", 0.1, 0.0)))
            if kind == "hcs":
                specs.append((p + "filter.h", (cfg["hcs_filter_groups"], 1, cfg["hcs_filter_length"]),
                              bf, ("normal", 0.2, 0.0)))
            elif kind == "hcm":
                specs.append((p + "filter.h", (cfg["hcm_filter_groups"], 1, cfg["hcm_filter_length"]),
                              bf, ("normal", 0.1, 0.0)))
                specs.append((p + "filter.D", (D,), bf, ("normal", 0.5, 0.0)))
            else:
                G = cfg["hcl_filter_groups"]
                specs.append((p + "filter.log_poles", (G, S, 1), f32, ("poles",)))
                specs.append((p + "filter.residues", (G, S), f32, ("normal", 0.1 / math.sqrt(S), 0.0)))
                specs.append((p + "filter.D", (D,), bf, ("normal", 0.5, 0.0)))
            shape, init = lin(3 * D, D)
            specs.append((p + "projections.weight", shape, bf, init))
            if cfg.get("qkv_proj_bias", False):
                specs.append((p + "projections.bias", (3 * D,), bf, ("normal", 0.1, 0.0)))
            specs.append((p + "projections._extra_state", None, None, ("extra_state", 3 * D)))
            shape, init = lin(D, D)
            specs.append((p + "out_filter_dense.weight", shape, bf, init))
            if cfg.get("hyena_out_proj_bias", True):
                specs.append((p + "out_filter_dense.bias", (D,), bf, ("normal", 0.1, 0.0)))
        for name, (o, n) in (("l1", (F, D)), ("l2", (F, D)), ("l3", (D, F))):
            shape, init = lin(o, n)
            specs.append((p + f"mlp.{name}.weight", shape, bf, init))
    if cfg.get("final_norm", True):
        specs.append(("norm.scale",) + norm)
    if not cfg.get("tie_embeddings", True):
        specs.append(("unembed.weight", (cfg["vocab_size"], D), bf, ("normal", 1.0 / math.sqrt(D), 0.0)))
    return specs


def spec_nbytes(specs):
    sizes = {"bfloat16": 2, "float32": 4}
    return sum(math.prod(s) * sizes[dt] for _, s, dt, _ in specs if s is not None)


def make_tensor(torch, gen, shape, dtype, init, chunk_elems=1 << 24):
    """One tensor, generated in float32 row chunks straight into its storage dtype, so
    that no float32 copy of a large matrix exists at any time."""
    if init[0] == "extra_state":
        # A small torch.save'd dict shaped like Transformer Engine's FP8 metadata, stored
        # as io.BytesIO as in the released checkpoints (vortex drops it without TE).
        meta = {
            "scale_fwd": torch.ones(3),
            "scale_inv_fwd": torch.ones(3),
            "amax_history_fwd": torch.zeros(16, 3),
            "extra_fp8_variables": {"num_gemms": 1, "out_features": init[1]},
        }
        buf = io.BytesIO()
        torch.save(meta, buf)
        buf.seek(0)
        return buf
    dt = getattr(torch, dtype)
    if init[0] == "inv_freq":
        (n,) = shape
        idx = torch.arange(0, 2 * n, 2, dtype=torch.float32)
        return (1.0 / (init[1] ** (idx / (2 * n)))).to(dt)
    if init[0] == "poles":
        # log_poles = -exp(p) * exp(g): decay rates in about [0.004, 0.1] per step
        p = -1.0 + 0.3 * torch.randn(shape, generator=gen)
        g = torch.log(0.01 + 0.09 * torch.rand(shape, generator=gen))
        return (-torch.exp(p) * torch.exp(g)).to(dt)
    _, std, mean = init
    out = torch.empty(shape, dtype=dt)
    flat = out.view(shape[0], -1)
    rows = max(1, chunk_elems // max(1, flat.shape[1]))
    for r in range(0, flat.shape[0], rows):
        block = torch.randn(flat[r:r + rows].shape, generator=gen)
        if std != 1.0:
            block.mul_(std)
        if mean != 0.0:
            block.add_(mean)
        flat[r:r + rows].copy_(block)
    return out


def build_state_dict(cfg, seed, progress=False):
    import torch

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    specs = weight_specs(cfg)
    for j, (name, shape, dtype, init) in enumerate(specs):
        sd[name] = make_tensor(torch, gen, shape, dtype, init)
        if progress and (j + 1) % 50 == 0:
            log(f"  {j + 1}/{len(specs)} tensors")
    return sd


def write_config(cfg, path, preset, seed, reduced):
    import yaml

    with open(path, "w") as f:
        f.write(f"# Evo 2 architecture of evo2's configs/{PRESETS[preset]} ({preset}) with RANDOM\n")
        f.write(f"# weights (bench/evo2_reference_bench.py make-weights, seed {seed}).\n")
        if reduced:
            f.write(f"# Reduced for testing: {reduced}.\n")
        f.write("# GPU-only options off for the CPU: " + ", ".join(CPU_FLAGS_OFF) + ".\n")
        yaml.safe_dump(cfg, f, sort_keys=False)


def available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cmd_make_weights(a):
    import torch

    cfg = preset_config(a.preset, a.layers, a.hidden)
    reduced = ", ".join(s for s in (
        f"num_layers {a.layers}" if a.layers is not None else "",
        f"hidden_size {a.hidden}" if a.hidden is not None else "") if s)
    specs = weight_specs(cfg)
    nbytes = spec_nbytes(specs)
    avail = available_memory_bytes()
    log(f"{a.preset}: {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, "
        f"{sum(math.prod(s) for _, s, _, _ in specs if s is not None) / 1e9:.3f} B parameters, "
        f"about {nbytes / GIB:.2f} GiB of tensors (held in memory until saved)")
    if avail is not None and nbytes > 0.9 * avail:
        log(f"warning: only {avail / GIB:.1f} GiB of memory available")
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    sd = build_state_dict(cfg, a.seed, progress=True)
    t_gen = time.perf_counter() - t0
    path = os.path.join(a.out, f"{a.preset}.pt")
    for name in os.listdir(a.out):
        if name.endswith(".pt") and name != os.path.basename(path):
            log(f"warning: {os.path.join(a.out, name)} is also in --out; `run` needs one .pt")
    tmp = path + ".partial"
    t1 = time.perf_counter()
    torch.save(sd, tmp)
    os.replace(tmp, path)
    t_save = time.perf_counter() - t1
    del sd
    write_config(cfg, os.path.join(a.out, "config.yml"), a.preset, a.seed, reduced)
    size = os.path.getsize(path)
    info = {
        "preset": a.preset,
        "path": path,
        "config": os.path.join(a.out, "config.yml"),
        "file_bytes": size,
        "file_gib": round(size / GIB, 3),
        "generate_s": round(t_gen, 3),
        "save_s": round(t_save, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
    }
    print(json.dumps(info) if a.json else
          f"wrote {path}: {size / GIB:.3f} GiB ({size} bytes) in {t_gen + t_save:.1f} s "
          f"(generate {t_gen:.1f} s, save {t_save:.1f} s), peak RSS {info['peak_rss_gib']} GiB; "
          f"config {info['config']}")


# --------------------------------------------------------------------------------------
# vortex on the CPU
# --------------------------------------------------------------------------------------


class _NoopDeviceContext(contextlib.AbstractContextManager):
    def __init__(self, device=None):
        self.device = device

    def __exit__(self, *exc):
        return False


def import_vortex_for_cpu():
    """Applies the CPU workarounds (see the module docstring) and returns
    (StripedHyena, dotdict, load_checkpoint)."""
    import torch

    if "flash_attn_2_cuda" not in sys.modules:
        sys.modules["flash_attn_2_cuda"] = types.ModuleType("flash_attn_2_cuda")
    torch.cuda.device = _NoopDeviceContext

    here = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # vortex.logging creates a log file in the working directory
        try:
            import vortex.logging  # noqa: F401
            import vortex.model.rotary as rotary
            from vortex.model.model import StripedHyena
            from vortex.model.utils import dotdict, load_checkpoint
        finally:
            os.chdir(here)

    def rotary_qkv_plain(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False,
                         seqlen_offsets=0, num_heads_q=None):
        # qkv: (batch, seqlen, 3, heads, head_dim); rotate q and k, keep v.
        if qkv.dim() != 5 or num_heads_q is not None or not isinstance(seqlen_offsets, int):
            raise NotImplementedError("CPU rotary shim: packed qkv with an integer offset only")
        n = qkv.shape[1]
        rows = slice(seqlen_offsets, seqlen_offsets + n)
        ck = cos if cos_k is None else cos_k
        sk = sin if sin_k is None else sin_k
        q = rotary.apply_rotary_emb_torch(qkv[:, :, 0], cos[rows], sin[rows], interleaved)
        k = rotary.apply_rotary_emb_torch(qkv[:, :, 1], ck[rows], sk[rows], interleaved)
        return torch.stack((q, k, qkv[:, :, 2]), dim=2)

    rotary.apply_rotary_emb_qkv_ = rotary_qkv_plain
    return StripedHyena, dotdict, load_checkpoint


def quiet():
    """vortex prints progress bars, the dropped keys and log lines: keep stdout clean."""
    import logging
    import warnings

    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
    return contextlib.redirect_stdout(sys.stderr)


def find_checkpoint(d):
    pts = sorted(n for n in os.listdir(d) if n.endswith(".pt"))
    if len(pts) != 1:
        sys.exit(f"--dir {d}: expected exactly one .pt file, found {pts or 'none'}")
    cfg = os.path.join(d, "config.yml")
    if not os.path.exists(cfg):
        sys.exit(f"--dir {d}: no config.yml")
    return cfg, os.path.join(d, pts[0])


def read_fasta(path):
    name, parts, records = None, [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    records.append((name, "".join(parts)))
                name, parts = line[1:].split()[0] if len(line) > 1 else "", []
            elif line:
                parts.append(line)
    if name is not None:
        records.append((name, "".join(parts)))
    if len(records) != 1:
        sys.exit(f"--fasta {path}: expected one record, found {len(records)}")
    return records[0]


def write_fasta(path, name, seq, width=80):
    with open(path, "w") as f:
        f.write(f">{name}\n")
        for i in range(0, len(seq), width):
            f.write(seq[i:i + width] + "\n")


def current_rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def reset_peak_rss():
    """Resets the resident-set high-water mark (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cpu_bf16_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return sorted(have & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})
    except OSError:
        pass
    return None


def child_run(a):
    """The measured run, in its own process (started by cmd_run)."""
    import torch
    import yaml

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    cfg_path, pt_path = find_checkpoint(a.dir)
    with quiet():
        StripedHyena, dotdict, load_checkpoint = import_vortex_for_cpu()
    rss_startup = current_rss_bytes()

    if a.fasta:
        name, seq = read_fasta(a.fasta)
    else:
        rng = random.Random(a.seed)
        seq = "".join(rng.choice("ACGT") for _ in range(a.len))
        name = f"random-dna-L{a.len}-seed{a.seed}"
    if a.fasta_out:
        write_fasta(a.fasta_out, name, seq)
    ids = torch.tensor(list(seq.encode("utf-8")), dtype=torch.long)
    L = ids.numel()
    if L < 2:
        sys.exit("the sequence needs at least 2 bases")

    with open(cfg_path) as f:
        config = dotdict(yaml.safe_load(f))  # as evo2's Evo2.load_evo2_model does
    torch.manual_seed(0)  # vortex's random init before loading; overwritten by the load
    with quiet():
        t0 = time.perf_counter()
        model = StripedHyena(config)
        t1 = time.perf_counter()
        load_checkpoint(model, pt_path)
        if a.precision == "f32":
            model.float()
        model.eval()
        t2 = time.perf_counter()
    dtypes = {}
    for _, p in model.named_parameters():
        dtypes[str(p.dtype).replace("torch.", "")] = dtypes.get(str(p.dtype).replace("torch.", ""), 0) + p.numel()

    rss_load = current_rss_bytes()
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    can_reset = reset_peak_rss()
    if a.generate:
        print(json.dumps(generate_run(a, model, ids, t2 - t1)), flush=True)
        return

    times, first = [], None
    with torch.inference_mode():
        for r in range(a.warmup + a.repeat):
            t = time.perf_counter()
            logits, _ = model(ids[None])
            dt = time.perf_counter() - t
            first = dt if first is None else first
            if r >= a.warmup:
                times.append(dt)
            if r + 1 < a.warmup + a.repeat:
                del logits
        t = time.perf_counter()
        logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        ll = logp.gather(-1, ids[1:, None])[:, 0]
        t_ll = time.perf_counter() - t
    ll_sum = float(ll.double().sum())

    fwd_peak = peak_rss_bytes() if can_reset else None
    out = {
        "engine": "vortex",
        "vortex_version": package_version("vtx"),
        "torch_version": torch.__version__,
        "precision": a.precision,
        "logits_dtype": str(logits.dtype).replace("torch.", ""),
        "param_dtypes": dtypes,
        "threads": a.threads,
        "L": L,
        "record": name,
        "fasta": a.fasta or a.fasta_out,
        "checkpoint": pt_path,
        "model_name": config.get("model_name"),
        "num_layers": config.get("num_layers"),
        "hidden_size": config.get("hidden_size"),
        "build_s": round(t1 - t0, 4),
        "load_s": round(t2 - t1, 4),
        "forward_s": round(statistics.median(times), 4),
        "forward_s_all": [round(x, 4) for x in times],
        "first_forward_s": round(first, 4),
        "warmup": a.warmup,
        "tokens_per_s": round(L / statistics.median(times), 2),
        "loglik_s": round(t_ll, 4),
        "loglik_sum": ll_sum,
        "loglik_mean": ll_sum / (L - 1),
        "scored": L - 1,
        "finite": bool(torch.isfinite(logits).all()) and math.isfinite(ll_sum),
        "rss_startup_gib": round(rss_startup / GIB, 3) if rss_startup else None,
        "rss_after_load_gib": round(rss_load / GIB, 3) if rss_load else None,
        "load_peak_rss_gib": round(peak_load / GIB, 3),
        "forward_peak_rss_gib": round(fwd_peak / GIB, 3) if fwd_peak else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_bf16_flags(),
        "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
    }
    print(json.dumps(out), flush=True)


def generate_run(a, model, ids, load_s):
    """Greedy cached generation with vortex's own Generator: prefill by the parallel forward,
    then one cached step per token (timed by its token callback)."""
    import torch
    from vortex.model.generation import Generator
    from vortex.model.tokenizer import CharLevelTokenizer

    stamps = []
    gen = Generator(model, CharLevelTokenizer(512), top_k=1, top_p=1.0, temperature=1.0)
    t = time.perf_counter()
    with torch.inference_mode(), quiet():
        toks, _, _ = gen.generate(device="cpu", input_ids=ids[None], num_tokens=a.generate,
                                  cached_generation=True, print_generation=False,
                                  stop_at_eos=False,
                                  token_callback=lambda i: stamps.append(time.perf_counter()))
    n = len(stamps)
    decode_s = stamps[-1] - stamps[0]
    return {
        "engine": "vortex", "mode": "generate", "precision": a.precision, "threads": a.threads,
        "prompt": ids.numel(), "tokens": n, "load_s": round(load_s, 3),
        "prefill_s": round(stamps[0] - t, 4), "decode_s": round(decode_s, 4),
        "decode_tokens_per_s": round((n - 1) / decode_s, 3) if n > 1 else None,
        "ids": [int(x) for x in toks[0]],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3),
        "torch_version": torch.__version__,
    }


def package_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def cmd_run(a):
    find_checkpoint(a.dir)  # fail early, before starting the child
    if a.fasta and a.fasta_out:
        sys.exit("give --fasta or --fasta-out, not both")
    if a.fasta is None and a.fasta_out is None:
        a.fasta_out = os.path.join(a.dir, f"random-dna-L{a.len}-seed{a.seed}.fa")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(a.threads)
    argv = [sys.executable, os.path.abspath(__file__), "_child",
            "--dir", a.dir, "--len", str(a.len), "--seed", str(a.seed),
            "--precision", a.precision, "--threads", str(a.threads),
            "--repeat", str(a.repeat), "--warmup", str(a.warmup),
            "--generate", str(a.generate)]
    if a.fasta:
        argv += ["--fasta", a.fasta]
    if a.fasta_out:
        argv += ["--fasta-out", a.fasta_out]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the vortex run failed (exit status {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if a.generate:
        res["process_wall_s"] = round(wall, 3)
        print(json.dumps(res) if a.json else "\n".join(f"{k:22} {v}" for k, v in res.items()))
        return
    res["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB, 3)
    res["process_wall_s"] = round(wall, 3)
    if a.json:
        print(json.dumps(res))
    else:
        for k in ("L", "precision", "threads", "build_s", "load_s", "forward_s", "first_forward_s",
                  "tokens_per_s",
                  "loglik_sum", "loglik_mean", "peak_rss_gib", "rss_startup_gib", "rss_after_load_gib",
                  "forward_peak_rss_gib", "param_dtypes", "fasta", "torch_version"):
            print(f"{k:22} {res[k]}")


# --------------------------------------------------------------------------------------
# GEMM peak
# --------------------------------------------------------------------------------------


def cmd_gemm_peak(a):
    import torch

    torch.set_num_threads(a.threads)
    n = a.n
    res = {"n": n, "threads": a.threads, "torch_version": torch.__version__,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_bf16_flags()}
    gen = torch.Generator().manual_seed(0)
    for dtype in ("float32", "bfloat16"):
        dt = getattr(torch, dtype)
        x = torch.randn(n, n, generator=gen).to(dt)
        y = torch.randn(n, n, generator=gen).to(dt)
        out = torch.empty(n, n, dtype=dt)
        torch.matmul(x, y, out=out)  # warm-up
        times = []
        for _ in range(a.runs):
            t = time.perf_counter()
            torch.matmul(x, y, out=out)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        res[f"{dtype}_gflops"] = round(2.0 * n**3 / med / 1e9, 2)
        res[f"{dtype}_s"] = round(med, 5)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"n={n}, {a.threads} threads, torch {res['torch_version']} ({res['cpu_capability']}): "
              f"f32 {res['float32_gflops']} GFLOP/s, bf16 {res['bfloat16_gflops']} GFLOP/s")


# --------------------------------------------------------------------------------------
# Key check
# --------------------------------------------------------------------------------------


def cmd_check_keys(a):
    import torch

    cfg = preset_config(a.preset, a.layers, a.hidden)
    torch.set_num_threads(a.threads)
    with quiet():
        StripedHyena, dotdict, load_checkpoint = import_vortex_for_cpu()
        model = StripedHyena(dotdict(cfg))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sd = build_state_dict(cfg, a.seed)
    ours = {k: (tuple(v.shape) if isinstance(v, torch.Tensor) else None) for k, v in sd.items()}
    dropped = sorted(set(ours) - set(want))
    missing = sorted(set(want) - set(ours))
    wrong = sorted(k for k in set(want) & set(ours) if want[k] != ours[k])
    problems = []
    if missing:
        problems.append(f"missing in make-weights: {missing}")
    if wrong:
        problems.append("shape differs: " + ", ".join(f"{k} {ours[k]} vs {want[k]}" for k in wrong))
    if any(not k.endswith("._extra_state") for k in dropped):
        problems.append(f"keys vortex would drop: {[k for k in dropped if not k.endswith('._extra_state')]}")
    # And through vortex's own loader (strict load_state_dict), from a saved file.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.pt")
        torch.save(sd, path)
        with quiet():
            load_checkpoint(model, path)
    for k, p in model.named_parameters():
        want_dt = torch.float32 if ("log_poles" in k or "residues" in k) else torch.bfloat16
        if p.dtype != want_dt:
            problems.append(f"{k}: {p.dtype} after load, expected {want_dt}")
    print(f"{a.preset} ({cfg['num_layers']} layers, hidden {cfg['hidden_size']}): "
          f"{len(want)} model keys, {len(ours)} file keys, dropped by the loader: "
          f"{len(dropped)} ({', '.join(sorted({k.split('.', 2)[2] for k in dropped})) or 'none'})")
    if problems:
        for p in problems:
            print("MISMATCH " + p)
        sys.exit(1)
    print("OK: key set and shapes equal vortex's state_dict (minus the _extra_state entries), "
          "strict load through vortex.model.utils.load_checkpoint succeeded")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where it has one (not None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "%(default)" not in text
                and action.default is not None and action.default is not False
                and action.default != argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def main(argv=None):
    fmt = _HelpFormatter
    ap = argparse.ArgumentParser(
        description="Evo 2 reference (vortex, vtx==1.1.0) CPU benchmark: random-weight "
                    "checkpoints in the released layout, timed scoring runs, GEMM peak. "
                    "See the module docstring for details.",
        formatter_class=fmt)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def reduce_args(p):
        p.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
        p.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)

    p = sub.add_parser("make-weights", formatter_class=fmt,
                       help="random weights of a released architecture (bf16 .pt + config.yml)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="evo2_1b_base",
                   help="released architecture (" + ", ".join(f"{k}: {v}" for k, v in PRESETS.items())
                   + ")")
    p.add_argument("--out", required=True, help="output directory (PRESET.pt and config.yml)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch threads for the random generation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    reduce_args(p)
    p.set_defaults(func=cmd_make_weights)

    def run_args(p):
        p.add_argument("--dir", required=True, help="directory with config.yml and one .pt")
        p.add_argument("--len", type=int, default=8192,
                       help="length of the random sequence (ignored with --fasta)")
        p.add_argument("--seed", type=int, default=0, help="seed of the random sequence")
        p.add_argument("--fasta", default=None,
                       help="score this one-record FASTA file instead of a random sequence")
        p.add_argument("--fasta-out", default=None,
                       help="write the scored random sequence here as FASTA "
                            "(default: DIR/random-dna-L{len}-seed{seed}.fa)")
        p.add_argument("--precision", choices=("bf16", "f32"), default="bf16",
                       help="bf16: as vortex loads released models (all bf16 except LI "
                            "poles/residues); f32: the whole model float32")
        p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                       help="torch.set_num_threads (and OMP/MKL_NUM_THREADS) of the run")
        p.add_argument("--repeat", type=int, default=1, help="timed forwards (median reported)")
        p.add_argument("--warmup", type=int, default=0, help="untimed forwards before them")
        p.add_argument("--generate", type=int, default=0,
                       help="instead of scoring: greedy cached generation (vortex's Generator, "
                            "top_k 1) of this many tokens after the sequence as prompt; reports "
                            "the prefill time, the per-token decode time and the tokens")

    p = sub.add_parser("run", formatter_class=fmt,
                       help="score one sequence with vortex in a fresh process; time and memory")
    run_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("_child")  # the measured process of `run`
    run_args(p)
    p.set_defaults(func=child_run)

    p = sub.add_parser("gemm-peak", formatter_class=fmt,
                       help="torch f32 and bf16 square matmul GFLOP/s")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch.set_num_threads")
    p.add_argument("--n", type=int, default=2048, help="square matrix size")
    p.add_argument("--runs", type=int, default=5, help="timed runs (median), after one warm-up")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_gemm_peak)

    p = sub.add_parser("check-keys", formatter_class=fmt,
                       help="check make-weights' keys and shapes against a vortex model "
                            "built from the (reduced) config")
    p.add_argument("--preset", choices=sorted(PRESETS), default="evo2_1b_base",
                   help="released architecture")
    p.add_argument("--layers", type=int, default=5, help="first N blocks of the release pattern")
    p.add_argument("--hidden", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="torch.set_num_threads")
    p.set_defaults(func=cmd_check_keys)

    # keep the hidden child command out of the usage line and the command list
    sub._choices_actions = [c for c in sub._choices_actions if c.dest != "_child"]
    sub.metavar = "{make-weights,run,gemm-peak,check-keys}"

    a = ap.parse_args(argv)
    for k in ("len", "repeat", "threads"):
        if getattr(a, k, 1) is not None and getattr(a, k, 1) < 1:
            sys.exit(f"--{k} must be at least 1")
    a.func(a)


if __name__ == "__main__":
    main()
