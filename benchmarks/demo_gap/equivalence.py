"""Is the trainer's dVAE run exactly the old loop + (the trainer's order, its schedule, its per-step seeds)?

Trains seed 0 for N steps both ways and prints the largest weight difference. python equivalence.py [N]
"""
import sys
import shutil
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from dalle_core.demo import runner, shapes
from dalle_core.demo.runner import DemoConfig, render_set
from dalle_core.models.vae import DiscreteVAE
from dalle_core.training import batches as tb, train_vae, schedules as ts
from dalle_core.data.common import mix_seed

torch.set_num_threads(1)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 30
cfg = DemoConfig(seed=0, vae_steps=N)
tok = shapes.word_tokenizer()
L = shapes.caption_length_bound(relations=False, tokenizer=tok)
caps, images = render_set(cfg.train_images, "train", 0, 32)
text = tok.tokenize(caps, L)
out = Path("outputs/demo_gap/runs/equivalence")
shutil.rmtree(out, ignore_errors=True)
torch.manual_seed(0)
a = train_vae(runner.vae_config(cfg, out), dataset=TensorDataset(text, images))

torch.manual_seed(0)
b = DiscreteVAE(image_size=32, num_layers=2, num_tokens=128, codebook_dim=64, hidden_dim=32, kl_div_loss_weight=0.01,
                entropy_loss_weight=0.0)
opt = torch.optim.AdamW([p for p in b.parameters()], lr=2e-3, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: ts.warmup_cosine(s, warmup_steps=N // 20, total_steps=N, min_ratio=0.1))
shuffle = tb.EpochShuffle(len(images), 0)
per_epoch = len(images) // 64
b.train()
step, epoch = 0, 0
while step < N:
    shuffle.set_epoch(epoch)
    perm = torch.tensor(list(iter(shuffle)))
    for index in range(per_epoch):
        if step >= N:
            break
        torch.manual_seed(mix_seed(0, "step", 0, epoch, index))
        loss = b(images[perm[index * 64:(index + 1) * 64]], return_loss=True, temp=0.9)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
    epoch += 1
sa, sb = a.state_dict(), b.state_dict()
diff = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
print(f"steps {N}: largest weight difference trainer vs old loop (trainer order, schedule, per-step seeds): {diff:.3g}")
