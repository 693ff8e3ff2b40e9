"""Where the fused RMSNorm+quant kernel and rms_norm -> quant_rows part at 2048 rows (GPU test
test_equals_unfused_kernels_gpu[2048-*] failed on the H200, 2026-12-04): counts and a few cases."""
import torch

from gpu_kernels.rms_norm import rms_norm
from gpu_kernels.rms_norm_quant import rms_norm_quant
from gpu_kernels.row_quant import quant_rows
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref
from tests.kernels.test_rms_norm_quant import _bits, _inputs

REF = {"fp8": quant_fp8_rows_ref, "int8": quant_int8_rows_ref}
for rows in (256, 1024, 2048):
    for kind in ("fp8", "int8"):
        torch.manual_seed(0)
        x, w, res = _inputs(rows, 4096, torch.bfloat16, True, "cuda")
        for label, r in (("res", res), ("nores", None)):
            q, scale, _ = rms_norm_quant(x, w, 1e-5, kind, r)
            y, _ = rms_norm(x, w, 1e-5, r)
            qw, sw = quant_rows(y, kind)
            qr, sr = REF[kind](y)
            bad_q = (_bits(q) != _bits(qw))
            bad_rows = bad_q.any(1).nonzero().flatten().tolist()
            print(f"rows {rows} {kind} {label}: q differs at {int(bad_q.sum())} values in rows "
                  f"{bad_rows[:8]}; scale differs in {int((scale != sw).sum())} rows "
                  f"(fused==ref {int((scale == sr).sum())}, unfused==ref {int((sw == sr).sum())}); "
                  f"q fused==ref {bool(torch.equal(_bits(q), _bits(qr)))}, "
                  f"unfused==ref {bool(torch.equal(_bits(qw), _bits(qr)))}")
            for rr in bad_rows[:3]:
                cols = bad_q[rr].nonzero().flatten()[:4].tolist()
                print(f"   row {rr}: scale fused {scale[rr].item()!r} unfused {sw[rr].item()!r}; "
                      + "; ".join(f"col {c}: y {y[rr, c].item()!r} q {q[rr, c].float().item()} "
                                  f"vs {qw[rr, c].float().item()} ref {qr[rr, c].float().item()}"
                                  for c in cols))
