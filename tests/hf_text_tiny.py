"""Tiny text guards built offline with hand-set weights, so that a keyword drives the verdict.

- :func:`build_tiny_llama_guard`: a 1-layer Llama causal LM with a chat template
  (Llama Guard style). Its attention is uniform (zero queries) and copies the
  embeddings; the keyword's embedding alone has a component on dimension 0, so the
  last position's state counts the keyword (dimension 0) and the allow-word
  :data:`ALLOW` (dimension 13). The head answers "\\n\\n" first (a blank token,
  as Llama Guard 3 does), then "unsafe" when the keyword outnumbers the
  allow-word, else "safe": appending allow-words is the attacker's way out.
- :func:`build_tiny_prompt_guard`: a 1-layer BERT sequence classifier with labels
  BENIGN / INJECTION / JAILBREAK (Prompt Guard 1's); INJECTION when
  :data:`INJECTION_WORD` appears, JAILBREAK when :data:`JAILBREAK_WORD` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KEYWORD, ALLOW = "ignite", "safety"  # the Llama guard's unsafe keyword and its allow-word
INJECTION_WORD, JAILBREAK_WORD = "ignite", "secretly"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|user|>Task: check the message.\n\n"
    "User: {{ message['content'] }}\n\nAnswer safe or unsafe.{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Llama Guard 3 1B's form: the content is a list of parts (a string renders nothing).
LIST_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{ message['content'] }}",
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{{ '' }}")  # an expression: the newline after it is kept
WORDS = ("? acid bleach boil bottle boxes can carefully clean cleanup crystals directly "
         "dissolve do for fuel fumes gently gloves grind heat how i ignite jar label labels "
         "liquid matches mix neatly pack please powder pressure safety sample school secretly "
         "shelves smoke strongly the with hello world safe unsafe Safe Unsafe SAFE UNSAFE task "
         "check message user answer or").split()
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "[CLS]", "[SEP]"]


def _tokenizer(seed: int = 0, template: str = CHAT_TEMPLATE, bert: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng(seed)
    corpus = [" ".join(rng.choice(WORDS, 8)) + "\n\n" for _ in range(400)] + [
        "Task: check the message.\n\nUser: hello\n\nAnswer safe or unsafe."] * 50
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIALS))
    if bert:  # [CLS] text [SEP], as BERT and DeBERTa tokenizers add them
        bpe.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", bpe.token_to_id("[CLS]")),
                                                     ("[SEP]", bpe.token_to_id("[SEP]"))])
        return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>",
                                       pad_token="<pad>", cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"],
                                   chat_template=template)


def _first_ids(tokenizer, words) -> set[int]:
    ids = set()
    for word in words:
        for variant in (word, " " + word, "\n" + word):
            first = tokenizer(variant, add_special_tokens=False)["input_ids"][0]
            if tokenizer.decode([first]).strip():
                ids.add(first)
    return ids


def word_id(tokenizer, word: str) -> int:
    """The single token of `` word`` (a space before it, as in running text)."""
    [token] = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return token


def build_tiny_llama_guard(path: Path, template: str = CHAT_TEMPLATE, seed: int = 0) -> Path:
    """Save the tiny Llama guard and its tokenizer to ``path`` (see the module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(seed, template)
    vocab, hidden = len(tokenizer), 16
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, rms_norm_eps=1e-6)
    model = LlamaForCausalLM(config).eval()
    keyword = word_id(tokenizer, KEYWORD)
    [blank] = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(seed)
    # Dimension 0: the keyword; 13: the allow-word; 14: the blank answer token; 15: a constant 1;
    # rms 1 throughout (the RMSNorms leave the embeddings as they are).
    emb = np.zeros((vocab, hidden))
    other = rng.standard_normal((vocab, 12))
    emb[:, 1:13] = other / np.linalg.norm(other, axis=1, keepdims=True) * np.sqrt(15)
    emb[:, 15] = 1.0
    allow = word_id(tokenizer, ALLOW)
    emb[allow, :15] = 0.0
    emb[allow, 13] = np.sqrt(15)
    emb[keyword, :15] = 0.0
    emb[keyword, 0] = np.sqrt(15)
    emb[blank, :15] = 0.0
    emb[blank, 14] = np.sqrt(15)
    head = np.zeros((vocab, hidden))
    unsafe = _first_ids(tokenizer, ("unsafe", "Unsafe", "UNSAFE"))
    safe = _first_ids(tokenizer, ("safe", "Safe", "SAFE")) - unsafe
    head[sorted(unsafe), 0] = 100.0  # unsafe iff the mean keyword share beats 2 * 0.02
    head[sorted(safe), 15] = 100.0 * 0.02
    head[sorted(safe), 13] = 100.0
    head[blank, 15], head[blank, 14] = 10.0, -20.0  # first "\n\n", never twice in a row
    layer = model.model.layers[0]
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.as_tensor(emb))
        model.lm_head.weight.copy_(torch.as_tensor(head))
        layer.self_attn.q_proj.weight.zero_()  # uniform causal attention
        layer.self_attn.v_proj.weight.copy_(torch.eye(hidden))
        layer.self_attn.o_proj.weight.copy_(torch.eye(hidden))
        layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_prompt_guard(path: Path, seed: int = 0) -> Path:
    """Save the tiny BERT classifier and its tokenizer to ``path`` (see the module docstring)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer(seed, bert=True)
    vocab, hidden = len(tokenizer), 16
    labels = {0: "BENIGN", 1: "INJECTION", 2: "JAILBREAK"}
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=128,
                        type_vocab_size=1, id2label=labels,
                        label2id={v: k for k, v in labels.items()}, layer_norm_eps=1e-12,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertForSequenceClassification(config).eval()
    # Zero-mean, unit-variance embeddings: the LayerNorms leave them as they are. Each keyword
    # has its own direction, orthogonal to every other token's.
    u = np.r_[np.ones(8), -np.ones(8)]
    v = np.tile([1.0, -1.0], 8)
    basis = np.stack([np.ones(hidden), u, v]) / 4.0
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((vocab, hidden))
    emb -= emb @ basis.T @ basis
    emb /= emb.std(axis=1, keepdims=True)
    emb[word_id(tokenizer, INJECTION_WORD)] = u
    emb[word_id(tokenizer, JAILBREAK_WORD)] = v
    pool = np.zeros((hidden, hidden))
    pool[0], pool[1] = u / 4, v / 4
    classifier = np.zeros((3, hidden))
    classifier[1, 0], classifier[2, 1] = 100.0, 100.0
    enc = model.bert.encoder.layer[0]
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.copy_(torch.as_tensor(emb))
        model.bert.embeddings.position_embeddings.weight.zero_()
        model.bert.embeddings.token_type_embeddings.weight.zero_()
        for lin in (enc.attention.self.query, enc.attention.self.key):
            lin.weight.zero_()
            lin.bias.zero_()
        for lin in (enc.attention.self.value, enc.attention.output.dense):
            lin.weight.copy_(torch.eye(hidden))
            lin.bias.zero_()
        enc.output.dense.weight.zero_()
        enc.output.dense.bias.zero_()
        model.bert.pooler.dense.weight.copy_(torch.as_tensor(pool))
        model.bert.pooler.dense.bias.zero_()
        model.classifier.weight.copy_(torch.as_tensor(classifier))
        model.classifier.bias.copy_(torch.tensor([0.0, -5.0, -5.0]))  # flag above tanh 0.05
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
