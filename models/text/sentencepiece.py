"""SentencePiece models read without protobuf, turned into the `tokenizers` pipeline transformers' `T5Tokenizer`
builds from them (umT5's tokenizer: Unigram with the 300 `<extra_id_N>` sentinels umT5 declares, the model's
precompiled normalizer, whitespace split + metaspace, `</s>` appended).

One deliberate difference: an unknown piece gets the model's own `<unk>` id (3 in umT5), as in SentencePiece and
transformers 4 (what Wan ran with); transformers 5's `T5Tokenizer` hard-codes id 2, which is `<s>` in umT5.
"""
from __future__ import annotations

import struct
from typing import Iterator

from ...errors import CheckpointError

UMT5_EXTRA_IDS = 300            # `<extra_id_0..299>` after the 256000 SentencePiece pieces (google/umt5-xxl)

_CONTROL, _UNKNOWN, _USER_DEFINED = 3, 2, 4   # SentencePiece piece types
_UNIGRAM = 1


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
