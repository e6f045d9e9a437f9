"""Codebook usage of DiscreteVAE trained with its defaults and a plain Adam loop, per KL weight.

    OMP_NUM_THREADS=1 python benchmarks/vae_codebook_usage.py 0 0.1 1
"""
import torch, sys, time
from dalle_core import DiscreteVAE
torch.manual_seed(0)
def data(n=256, s=32):
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, s, s).clone() * 0.3 + 0.6
    for i in range(n):
        c = torch.rand(3, generator=g); x0, y0 = torch.randint(0, s - 8, (2,), generator=g).tolist(); w = int(torch.randint(6, 16, (1,), generator=g))
        imgs[i, :, y0:y0 + w, x0:x0 + w] = c[:, None, None]
    return imgs
imgs = data()
for w in [float(a) for a in sys.argv[1:]]:
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=32, num_layers=2, kl_div_loss_weight=w)   # library defaults otherwise
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    t = time.time()
    for step in range(300):
        batch = imgs[torch.randint(0, len(imgs), (32,))]
        loss = vae(batch, return_loss=True); opt.zero_grad(); loss.backward(); opt.step()
    u = vae.codebook_usage(imgs)
    rec = (vae(imgs[:64]) - imgs[:64]).abs().mean().item()
    print(f"kl {w}: usage {u.usage:.2f} perplexity {u.perplexity:.1f} recon L1 {rec:.4f} ({time.time()-t:.0f}s)", flush=True)
