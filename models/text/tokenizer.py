"""The umT5 tokenizer as Wan uses it: whitespace cleaning, `</s>` appended, truncated and padded to 512 tokens.

Where it comes from, first found wins:
1. the text-encoder checkpoint itself (ComfyUI's umT5 files carry the SentencePiece model as a `spiece_model`
   uint8 tensor);
2. beside the checkpoint: `tokenizer.json` or `spiece.model` in its folder, in `google/umt5-xxl/` there (the
   official Wan layout) or in `../tokenizer/` (the diffusers layout);
3. `tokenizers/umt5-xxl/` under a text-encoder models folder.

A SentencePiece model is turned into the same `tokenizers` pipeline transformers' `T5Tokenizer` builds from it
(Unigram with the 300 `<extra_id_N>` sentinels umT5 declares, the model's precompiled normalizer, whitespace split +
metaspace, `</s>` appended), read without protobuf. One deliberate difference: an unknown piece gets the model's own
`<unk>` id (3 in umT5), as in SentencePiece and transformers 4 (what Wan ran with); transformers 5's `T5Tokenizer`
hard-codes id 2, which is `<s>` in umT5.
"""
from __future__ import annotations

import html
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import ftfy
import regex
import torch

from ... import runtime
from ...errors import CheckpointError, InputError


TEXT_LENGTH = 512
UMT5_EXTRA_IDS = 300            # `<extra_id_0..299>` after the 256000 SentencePiece pieces (google/umt5-xxl)
SPIECE_KEY = "spiece_model"     # ComfyUI's tensor holding the serialized SentencePiece model
TOKENIZER_FOLDER = ("tokenizers", "umt5-xxl")

_CONTROL, _UNKNOWN, _USER_DEFINED = 3, 2, 4   # SentencePiece piece types
_UNIGRAM = 1


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning (wan/modules/tokenizers.py): ftfy fix, HTML unescape twice, collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
    """Prompts → (ids [B, length], attention mask [B, length]) exactly as Wan tokenizes them."""

    def __init__(self, backend, name: str):
        self.backend = backend  # a `tokenizers.Tokenizer`
        self.name = name
        self.pad_id = backend.token_to_id("<pad>")
        if self.pad_id is None or backend.token_to_id("</s>") is None:
            raise CheckpointError(f"{name} is not a T5 tokenizer (it has no <pad> or </s> token)",
                                  "use the tokenizer of google/umt5-xxl")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, prompts: Sequence[str], length: int = TEXT_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
        self.backend.enable_truncation(max_length=length)
        self.backend.enable_padding(length=length, pad_id=self.pad_id, pad_token="<pad>")
        encodings = self.backend.encode_batch([clean_prompt(p) for p in prompts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


# ----------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class TokenizerSource:
    """Where a text encoder's tokenizer is read from; `stamp` (size, mtime_ns) makes a replaced file reload."""
    kind: str       # "checkpoint" (its spiece_model tensor), "spiece" (a SentencePiece file), "json" (tokenizer.json)
    path: str
    key: str = ""   # the tensor name, for kind "checkpoint"
    stamp: tuple[int, int] = (0, 0)


def _source(kind: str, path: Path, key: str = "") -> TokenizerSource:
    stat = path.stat()
    return TokenizerSource(kind, str(path), key, (stat.st_size, stat.st_mtime_ns))


def _in_folder(folder: Path) -> TokenizerSource | None:
    if (folder / "tokenizer.json").is_file():
        return _source("json", folder / "tokenizer.json")
    if (folder / "spiece.model").is_file():
        return _source("spiece", folder / "spiece.model")
    return None


def tokenizer_folders(weights_folder: Path) -> tuple[list[Path], list[Path]]:
    """Folders searched for tokenizer.json / spiece.model, in order: (beside the weights, shared)."""
    beside = [weights_folder, weights_folder / "google" / "umt5-xxl", weights_folder.parent / "tokenizer"]
    shared = [folder.joinpath(*TOKENIZER_FOLDER) for folder in runtime.model_folders("text_encoders")]
    return beside, shared


def find_tokenizer(checkpoint_keys: Sequence[str], files: Sequence[Path]) -> TokenizerSource:
    """The tokenizer for a checkpoint with `checkpoint_keys` stored in `files`; an InputError if there is none."""
    key = next((k for k in checkpoint_keys if k == SPIECE_KEY or k.endswith("." + SPIECE_KEY)), None)
    if key is not None:
        return _source("checkpoint", Path(files[0]), key)
    beside, shared = tokenizer_folders(Path(files[0]).parent)
    for folder in beside + shared:
        found = _in_folder(folder)
        if found is not None:
            return found
    raise InputError(
        f"no umT5 tokenizer was found for {Path(files[0]).name}: the file carries none ({SPIECE_KEY!r}), and no "
        f"tokenizer.json or spiece.model is in {', '.join(str(f) for f in beside + shared)}",
        f"put spiece.model (or tokenizer.json) of google/umt5-xxl into {shared[0]}, or use ComfyUI's "
        f"umt5_xxl_*.safetensors text encoder, which carries its tokenizer")


@lru_cache(maxsize=4)
def load_tokenizer(source: TokenizerSource) -> UMT5Tokenizer:
    """Build (once per source) the tokenizer `source` names."""
    from tokenizers import Tokenizer

    name = Path(source.path).name
    if source.kind == "json":
        try:
            return UMT5Tokenizer(Tokenizer.from_file(source.path), name)
        except Exception as exc:  # the Rust parser raises plain Exceptions
            raise CheckpointError(f"{source.path} is not a valid tokenizer.json ({exc})",
                                  "download the tokenizer of google/umt5-xxl again") from exc
    if source.kind == "spiece":
        data = Path(source.path).read_bytes()
    else:
        from ...model_loaders.checkpoint import open_checkpoint

        data = open_checkpoint(source.path).get(source.key).numpy().tobytes()
        name = f"{name} ({source.key})"
    return UMT5Tokenizer(tokenizer_from_sentencepiece(data, name), name)


# ----------------------------------------------------------------------------------------- SentencePiece
def tokenizer_from_sentencepiece(data: bytes, name: str, extra_ids: int = UMT5_EXTRA_IDS):
    """A `tokenizers.Tokenizer` equal to transformers' T5 conversion of the SentencePiece model `data`."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces, charsmap, model_type = _read_model_proto(data, name)
    if model_type != _UNIGRAM:
        raise CheckpointError(f"{name} is not a unigram SentencePiece model (type {model_type})",
                              "use the tokenizer of google/umt5-xxl")
    vocab = [(piece, score) for piece, score, _ in pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(extra_ids))]
    unk_id = next((i for i, (_, _, kind) in enumerate(pieces) if kind == _UNKNOWN), None)
    piece_ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    if unk_id is None or "</s>" not in piece_ids:
        raise CheckpointError(f"{name} is not a T5 SentencePiece model (no <unk> or </s> piece)",
                              "use the tokenizer of google/umt5-xxl")

    backend = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                           special_tokens=[("</s>", piece_ids["</s>"])])
    special = [p for p, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)] + [v for v, _ in vocab[len(pieces):]]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    user_defined = [p for p, _, kind in pieces if kind == _USER_DEFINED]
    if user_defined:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return backend


def _read_model_proto(data: bytes, name: str) -> tuple[list[tuple[str, float, int]], bytes, int]:
    """(pieces as (text, score, type), precompiled normalizer charsmap, model type) of a serialized ModelProto."""
    pieces, charsmap, model_type = [], b"", _UNIGRAM
    try:
        for field, value in _fields(data):
            if field == 1:      # repeated SentencePiece {1: piece, 2: score (float), 3: type (default NORMAL)}
                piece, score, kind = "", 0.0, 1
                for f, v in _fields(value):
                    if f == 1:
                        piece = v.decode("utf-8")
                    elif f == 2:
                        score = struct.unpack("<f", v)[0]
                    elif f == 3:
                        kind = v
                pieces.append((piece, score, kind))
            elif field == 2:    # TrainerSpec {3: model_type}
                model_type = next((v for f, v in _fields(value) if f == 3), _UNIGRAM)
            elif field == 3:    # NormalizerSpec {2: precompiled_charsmap}
                charsmap = next((v for f, v in _fields(value) if f == 2), b"")
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise CheckpointError(f"{name} is not a valid SentencePiece model ({exc})",
                              "download the tokenizer (spiece.model) of google/umt5-xxl again") from exc
    if not pieces:
        raise CheckpointError(f"{name} holds no SentencePiece vocabulary", "use the tokenizer of google/umt5-xxl")
    return pieces, charsmap, model_type


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of one protobuf message: int for varints, bytes otherwise."""
    i, end = 0, len(buf)
    while i < end:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > end:
            raise ValueError("truncated protobuf message")
        yield key >> 3, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
