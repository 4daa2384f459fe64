"""Small tokenizers built in code, so tiny models work offline (no vocab download).

- `tiny_clip_tokenizer()`: a real CLIP byte-level BPE (`transformers.CLIPTokenizer`) with merges
  learned, deterministically, on the project's prompts and checklists: each of their words is one
  token; any other text falls back to byte-level pieces, so every text tokenizes.
- `tiny_chat_tokenizer()`: a word-level tokenizer with chat and image special tokens and every
  printable ASCII character as a token too (so JSON can be spelled), for tiny multimodal LLMs.

Both are deterministic functions of the clinical knowledge base; a model saved with
`save_pretrained` carries its tokenizer files, so later knowledge edits never break it.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from functools import lru_cache

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

from craft_ray.knowledge.checklists import load_knowledge
from craft_ray.knowledge.labels import DATASETS
from craft_ray.knowledge.prompts import vocabulary_corpus

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer pattern (letters, digits, other symbols), as in CLIPTokenizer.
_CLIP_WORDS = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+")
CHAT_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable-unicode map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@lru_cache(maxsize=1)
def corpus_word_counts() -> tuple[tuple[str, int], ...]:
    texts = vocabulary_corpus(load_knowledge(), list(DATASETS.values()))
    texts += ["yes", "no", "answer yes or no", "a photograph", "a drawing", "a screenshot of text"]
    counts = Counter(w for t in texts for w in _CLIP_WORDS.findall(t.lower()))
    return tuple(sorted(counts.items()))


def corpus_words() -> tuple[str, ...]:
    return tuple(word for word, _ in corpus_word_counts())


def train_bpe(words: dict[tuple[str, ...], int]) -> list[tuple[str, str]]:
    """Byte-pair merges learned until every word is one symbol. Deterministic: the most frequent
    pair wins, ties go to the lexicographically smallest; pair counts are updated incrementally."""
    seqs = [list(w) for w in words]
    freqs = list(words.values())
    counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:], strict=False):
            counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry
        merges.append(pair)
        joined = pair[0] + pair[1]
        touched: set[tuple[str, str]] = set()
        for i in sorted(where.pop(pair)):
            seq, f = seqs[i], freqs[i]
            for old in zip(seq, seq[1:], strict=False):
                counts[old] -= f
                touched.add(old)
            out, j = [], 0
            while j < len(seq):
                if j + 1 < len(seq) and (seq[j], seq[j + 1]) == pair:
                    out.append(joined)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for new in zip(out, out[1:], strict=False):
                counts[new] += f
                where[new].add(i)
                touched.add(new)
        counts.pop(pair, None)
        for t in touched - {pair}:
            if counts[t] > 0:
                heapq.heappush(heap, (-counts[t], t))
    return merges


def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    byte_map = _bytes_to_unicode()
    base = list(byte_map.values())
    vocab: dict[str, int] = {}
    for token in [*base, *(c + "</w>" for c in base)]:
        vocab.setdefault(token, len(vocab))
    words = {}
    for word, count in corpus_word_counts():
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] = count
    merges = train_bpe(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def text_config_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """The vocabulary-dependent fields of a CLIP text config built for `tokenizer`."""
    return {
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


# every printable ASCII character is also a token of its own (appended after the words, so their ids
# do not move): constrained decoding can then spell any JSON, any key and any enum value, which
# word tokens alone cannot (no braces or quotes among them)
PRINTABLE = [chr(c) for c in range(32, 127)]


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    words = [*CHAT_SPECIALS, *corpus_words(), *list(".,:;?!'-()&/"), *PRINTABLE]
    vocab: dict[str, int] = {}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(CHAT_SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.padding_side = "left"
    return fast
