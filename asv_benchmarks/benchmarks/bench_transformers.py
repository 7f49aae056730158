"""transformers generate() time of a tiny random Llama (no download) with attn_implementation "flash_attn_cy" beside
"sdpa", CPU, fp32: 32 new tokens per row after a 128-token prompt (tokens/s = batch * 32 / time).
Skipped (n/a) when transformers is not installed (asv.conf.json installs it in asv's environments).

The model is small enough that attention is only part of the time: this tracks end-to-end integration overhead
(unpadding, layout changes) as much as kernel speed."""
from __future__ import annotations

CONFIG = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=1024)
PROMPT, NEW_TOKENS = 128, 32
_warmed = set()


class TinyLlamaGenerate:
    params = [["flash_attn_cy", "sdpa"], [1, 4]]
    param_names = ["attn_implementation", "batch"]
    timeout = 300
    repeat = (1, 5, 4.0)

    def setup(self, attn_implementation, batch):
        try:
            import torch
            from transformers import LlamaConfig, LlamaForCausalLM
        except ImportError:
            raise NotImplementedError("transformers is not installed")
        import flash_attn_cy

        if attn_implementation == "flash_attn_cy":
            flash_attn_cy.register_transformers()
        torch.manual_seed(0)
        self.model = LlamaForCausalLM._from_config(LlamaConfig(**CONFIG), attn_implementation=attn_implementation)
        self.model.eval()
        ids = torch.randint(1, CONFIG["vocab_size"], (batch, PROMPT), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        if batch > 1:
            mask[1:, : PROMPT // 4] = 0  # left padding in all rows but the first
        self.kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           do_sample=False, pad_token_id=0)
        self.batch = batch
        if (attn_implementation, batch) not in _warmed:
            self._generate()  # first generate() initialises torch and transformers caches: not part of the timing
            _warmed.add((attn_implementation, batch))

    def _generate(self):
        import torch

        with torch.no_grad():
            return self.model.generate(**self.kwargs)

    def time_generate(self, attn_implementation, batch):
        self._generate()
