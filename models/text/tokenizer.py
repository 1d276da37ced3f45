"""The tokenizer of every text encoder: where it is found, how it is read, and prompts → (ids, mask).

One table (`KINDS`, keyed by the encoder spec's `kind`) says, per encoder, which files make its tokenizer, where
they are looked for and where to get them. Places, first found wins:
1. the checkpoint itself (ComfyUI's umT5 files carry the SentencePiece model as a `spiece_model` uint8 tensor);
2. beside the weights: their folder, the kind's subfolders there (umT5: `google/umt5-xxl/`, the official Wan
   layout) and its diffusers sibling (`../tokenizer/`; CLIP-L as HunyuanVideo's second encoder: `../tokenizer_2/`;
   HunyuanCLIP: `../tokenizer/` beside the official `clip_text_encoder/`; Step-LLM: the step_llm folder itself);
3. `tokenizers/<name>/` under a text-encoder models folder;
4. the copy ComfyUI bundles in its `comfy/` package (Llama-3 and CLIP), when running inside (or beside) ComfyUI.
A candidate that is no tokenizer of the wanted kind (e.g. another model's tokenizer.json in a shared folder) is
passed over, and named in the error if nothing fits.

Files are read with `tokenizers`: tokenizer.json as saved (transformers 4's fast tokenizers ran exactly this
pipeline); SentencePiece models through `sentencepiece.py`; CLIP's vocab.json + merges.txt through the pipeline
CLIP's tokenizer.json describes (NFC, whitespace collapsed, lowercase, CLIP's word split, byte-level BPE with
`</w>` word ends, `<|startoftext|>` … `<|endoftext|>`); BERT's vocab.txt through the pipeline transformers builds
for it. Step-LLM's `step1_chat_tokenizer.model` is run by the `sentencepiece` package itself, as the official
tokenizer does, with the official wrapper's hard-coded BOS 1, EOS 2 and padding 2.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import ClassVar, Sequence

import ftfy
import regex
import torch

from ... import runtime
from ...errors import CheckpointError, InputError
from . import bert, stepllm
from .llama import PROMPT_TOKENS, TEMPLATE_TOKENS, VIDEO_TEMPLATE
from .sentencepiece import tokenizer_from_sentencepiece

__all__ = ["TEXT_LENGTH", "KINDS", "PromptTokenizer", "UMT5Tokenizer", "Llama3Tokenizer", "CLIPTokenizer",
           "BertTokenizer", "StepTokenizer", "TokenizerSource", "clean_prompt", "find_tokenizer", "load_tokenizer",
           "tokenizer_from_sentencepiece"]

TEXT_LENGTH = 512               # Wan's umT5 text length
SPIECE_KEY = "spiece_model"     # ComfyUI's tensor holding the serialized SentencePiece model
CLIP_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning (wan/modules/tokenizers.py): ftfy fix, HTML unescape twice, collapse whitespace."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


# ----------------------------------------------------------------------------------------- prompts → ids
class PromptTokenizer:
    """Prompts → (ids [B, length], attention mask [B, length]): cleaned as the model's recipe does, special tokens
    added by the tokenizer's own post-processor, truncated and padded at the end to `length`."""

    what: ClassVar[str] = ""
    length: ClassVar[int] = 0                    # the model's text length (tokens, special ones included)
    required: ClassVar[tuple[str, ...]] = ()    # tokens that prove the kind
    pad_tokens: ClassVar[tuple[str, ...]] = ()  # the first of these in the vocabulary pads

    def __init__(self, backend, name: str):
        self.backend = backend  # a `tokenizers.Tokenizer`
        self.name = name
        missing = [t for t in self.required if backend.token_to_id(t) is None]
        if missing:
            raise CheckpointError(f"{name} is not a {self.what} tokenizer (it has no {', '.join(missing)})",
                                  f"use the {self.what} tokenizer")
        self.pad_token = next((t for t in self.pad_tokens if backend.token_to_id(t) is not None), None)
        if self.pad_token is None:
            raise CheckpointError(f"{name} has no padding token ({' or '.join(self.pad_tokens)})",
                                  f"use the {self.what} tokenizer")
        self.pad_id = backend.token_to_id(self.pad_token)

    def clean(self, text: str) -> str:
        return text

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, prompts: Sequence[str], length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        length = length or self.length
        self.backend.enable_truncation(max_length=length)
        self.backend.enable_padding(length=length, pad_id=self.pad_id, pad_token=self.pad_token)
        encodings = self.backend.encode_batch([self.clean(p) for p in prompts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


class UMT5Tokenizer(PromptTokenizer):
    """umT5 as Wan uses it: Wan's whitespace cleaning, `</s>` appended, padded with `<pad>`."""
    what = "umT5"
    length = TEXT_LENGTH
    required = ("<pad>", "</s>")
    pad_tokens = ("<pad>",)

    def clean(self, text: str) -> str:
        return clean_prompt(text)


class Llama3Tokenizer(PromptTokenizer):
    """Llama-3 (LLaVA-Llama-3-8B's) as HunyuanVideo uses it: text as given, `<|begin_of_text|>` first, padded with
    LLaVA's `<pad>` (Meta's own tokenizer, which lacks it, pads with `<|end_of_text|>`; padding is masked anyway)."""
    what = "Llama-3"
    length = TEMPLATE_TOKENS + PROMPT_TOKENS
    required = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    pad_tokens = ("<pad>", "<|end_of_text|>")

    def __init__(self, backend, name: str):
        super().__init__(backend, name)
        # HunyuanVideo drops a fixed count of template tokens: a tokenizer that splits its template differently
        # (another vocabulary, no <|begin_of_text|>) would shift every prompt.
        count = len(backend.encode(VIDEO_TEMPLATE.split("{}")[0]).ids)
        if count != TEMPLATE_TOKENS:
            raise CheckpointError(f"{name} splits HunyuanVideo's prompt template into {count} tokens, not "
                                  f"{TEMPLATE_TOKENS}: it is not the Llama-3 tokenizer HunyuanVideo was trained with",
                                  "use the tokenizer.json of xtuner/llava-llama-3-8b-v1_1-transformers")


class CLIPTokenizer(PromptTokenizer):
    """CLIP's: `<|startoftext|>` prompt `<|endoftext|>`, padded with `<|endoftext|>`."""
    what = "CLIP"
    length = 77
    required = ("<|startoftext|>", "<|endoftext|>")
    pad_tokens = ("<|endoftext|>",)


class BertTokenizer(PromptTokenizer):
    """BERT's (HunyuanCLIP's, Step-Video's second encoder): `[CLS]` prompt `[SEP]`, padded with `[PAD]` to 77."""
    what = "BERT (HunyuanCLIP)"
    length = bert.TEXT_LENGTH
    required = ("[CLS]", "[SEP]", "[UNK]")
    pad_tokens = ("[PAD]",)


class StepTokenizer(PromptTokenizer):
    """Step-LLM's (Step-Video's first encoder), as the official `Wrapped_StepChatTokenizer`: the prompt's
    SentencePiece ids cut to 318, then ids 1 (BOS) … 2 (EOS), padded with 2 to 320 — ids hard-coded there, not read
    from the model. `backend` is a `sentencepiece.SentencePieceProcessor`; the official tokenizer asserts that the
    chat control tokens are in the model, so a model without them is refused."""
    what = "Step-LLM"
    length = stepllm.TEXT_LENGTH
    required = ("<|BOT|>", "<|EOT|>", "<|CALL_START|>", "<|CALL_END|>", "<|THINK_START|>", "<|THINK_END|>")
    BOS, EOS, PAD = 1, 2, 2

    def __init__(self, backend, name: str):
        self.backend, self.name = backend, name
        missing = [t for t in self.required if not backend.is_control(backend.piece_to_id(t))]
        if missing:
            raise CheckpointError(f"{name} is not a {self.what} tokenizer (it has no control token "
                                  f"{', '.join(missing)})", "use step_llm/step1_chat_tokenizer.model")
        self.pad_id = self.PAD

    @property
    def vocab_size(self) -> int:
        return self.backend.get_piece_size()

    def __call__(self, prompts: Sequence[str], length: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        length = length or self.length
        rows = [[self.BOS] + ids[:length - 2] + [self.EOS] for ids in self.backend.encode(list(prompts))]
        ids = torch.tensor([row + [self.PAD] * (length - len(row)) for row in rows], dtype=torch.long)
        mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows], dtype=torch.long)
        return ids, mask


# ----------------------------------------------------------------------------------------- where tokenizers are
@dataclass(frozen=True)
class TokenizerKind:
    """Where one encoder's tokenizer is found and what it is made of."""
    cls: type[PromptTokenizer]
    formats: tuple[str, ...]   # in order: "json" (tokenizer.json), "spiece" (spiece.model), "bpe" (vocab + merges)
    beside: tuple[str, ...]    # folders relative to the weights' folder
    shared: str                # the folder under `tokenizers/` in a text-encoder models folder
    comfy: str                 # ComfyUI's bundled copy, relative to its `comfy/` package ('' if none)
    origin: str                # the Hugging Face repository it comes from


KINDS = {
    "umt5": TokenizerKind(UMT5Tokenizer, ("json", "spiece"), (".", "google/umt5-xxl", "../tokenizer"),
                          "umt5-xxl", "", "google/umt5-xxl"),
    "llama": TokenizerKind(Llama3Tokenizer, ("json",), (".", "../tokenizer"), "llava-llama-3-8b",
                           "text_encoders/llama_tokenizer", "xtuner/llava-llama-3-8b-v1_1-transformers"),
    "clip_text": TokenizerKind(CLIPTokenizer, ("json", "bpe"), (".", "../tokenizer_2", "../tokenizer"),
                               "clip-vit-large-patch14", "sd1_tokenizer", "openai/clip-vit-large-patch14"),
    # Step-Video: step_llm/ holds its tokenizer; hunyuan_clip/ holds clip_text_encoder/ and tokenizer/.
    "stepllm": TokenizerKind(StepTokenizer, ("step",), (".",), "step_llm", "",
                             "stepfun-ai/stepvideo-t2v (step_llm/)"),
    "hunyuan_clip": TokenizerKind(BertTokenizer, ("json", "wordpiece"), (".", "../tokenizer", "tokenizer"),
                                  "hunyuan_clip", "", "stepfun-ai/stepvideo-t2v (hunyuan_clip/tokenizer/)"),
}
_FILES = {"json": ("tokenizer.json",), "spiece": ("spiece.model",), "bpe": ("vocab.json", "merges.txt"),
          "step": ("step1_chat_tokenizer.model",), "wordpiece": ("vocab.txt",)}


@dataclass(frozen=True)
class TokenizerSource:
    """Where a text encoder's tokenizer is read from; `stamp` (size, mtime_ns) makes a replaced file reload."""
    encoder: str    # the KINDS key
    kind: str       # "checkpoint" (its spiece_model tensor), a `_FILES` key (`path`: the format's first file)
    path: str
    key: str = ""   # the tensor name, for kind "checkpoint"
    stamp: tuple[int, int] = (0, 0)


def _source(encoder: str, kind: str, path: Path, key: str = "") -> TokenizerSource:
    stat = path.stat()
    return TokenizerSource(encoder, kind, str(path), key, (stat.st_size, stat.st_mtime_ns))


def tokenizer_folders(encoder: str, weights_folder: Path) -> list[Path]:
    """Folders searched for the tokenizer of `encoder` (a KINDS key), in order."""
    kind = KINDS[encoder]
    folders = []
    for relative in kind.beside:
        folder = weights_folder
        for part in relative.split("/"):
            folder = folder.parent if part == ".." else folder if part == "." else folder / part
        folders.append(folder)
    folders += [folder / "tokenizers" / kind.shared for folder in runtime.model_folders("text_encoders")]
    comfy = runtime.comfy_package_dir()
    if kind.comfy and comfy is not None:
        folders.append(comfy / kind.comfy)
    return folders


def find_tokenizer(encoder: str, checkpoint_keys: Sequence[str], files: Sequence[Path]) -> TokenizerSource:
    """The tokenizer for an `encoder` checkpoint with `checkpoint_keys` stored in `files`; an InputError naming
    every place searched if there is none."""
    key = next((k for k in checkpoint_keys if k == SPIECE_KEY or k.endswith("." + SPIECE_KEY)), None)
    if key is not None and "spiece" in KINDS[encoder].formats:
        return _source(encoder, "checkpoint", Path(files[0]), key)
    kind = KINDS[encoder]
    folders, passed_over = tokenizer_folders(encoder, Path(files[0]).parent), []
    for folder in folders:
        for fmt in kind.formats:
            if all((folder / name).is_file() for name in _FILES[fmt]):
                source = _source(encoder, fmt, folder / _FILES[fmt][0])
                try:
                    load_tokenizer(source)
                except CheckpointError as exc:
                    passed_over.append(exc.what)
                    continue
                return source
    wanted = " or ".join(" + ".join(_FILES[fmt]) for fmt in kind.formats)
    rejected = f"; passed over: {'; '.join(passed_over)}" if passed_over else ""
    raise InputError(
        f"no {kind.cls.what} tokenizer was found for {Path(files[0]).name}: no {wanted} in "
        f"{', '.join(str(f) for f in folders)}{rejected}",
        f"put {wanted} of {kind.origin} into {folders[len(kind.beside)]}"
        + (", or run inside ComfyUI, which bundles it" if kind.comfy else "")
        + (", or use ComfyUI's umt5_xxl_*.safetensors text encoder, which carries its tokenizer"
           if "spiece" in kind.formats else ""))


@lru_cache(maxsize=8)
def load_tokenizer(source: TokenizerSource) -> PromptTokenizer:
    """Build (once per source) the tokenizer `source` names; a CheckpointError if it is no tokenizer of its kind."""
    from tokenizers import Tokenizer

    kind = KINDS[source.encoder]
    name = source.path if source.kind != "bpe" else str(Path(source.path).parent)
    try:
        if source.kind == "json":
            backend = Tokenizer.from_file(source.path)
        elif source.kind == "bpe":
            backend = clip_bpe_tokenizer(Path(source.path), Path(source.path).with_name("merges.txt"))
        elif source.kind == "spiece":
            backend = tokenizer_from_sentencepiece(Path(source.path).read_bytes(), name)
        elif source.kind == "step":
            import sentencepiece

            backend = sentencepiece.SentencePieceProcessor(model_proto=Path(source.path).read_bytes())
        elif source.kind == "wordpiece":
            backend = bert_wordpiece_tokenizer(Path(source.path))
        else:
            from ...model_loaders.checkpoint import open_checkpoint

            name = f"{Path(source.path).name} ({source.key})"
            backend = tokenizer_from_sentencepiece(open_checkpoint(source.path).get(source.key).numpy().tobytes(),
                                                   name)
    except CheckpointError:
        raise
    except Exception as exc:  # the Rust parser raises plain Exceptions
        raise CheckpointError(f"{name} is not a valid tokenizer ({exc})",
                              f"download the tokenizer of {kind.origin} again") from exc
    return kind.cls(backend, name)


def clip_bpe_tokenizer(vocab: Path, merges: Path):
    """CLIP's tokenizer pipeline over its vocab.json and merges.txt (a `tokenizers.Tokenizer`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    backend = Tokenizer(BPE.from_file(str(vocab), str(merges), end_of_word_suffix="</w>",
                                      continuing_subword_prefix="", unk_token="<|endoftext|>", fuse_unk=False))
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|startoftext|>", "<|endoftext|>")])
    start, end = backend.token_to_id("<|startoftext|>"), backend.token_to_id("<|endoftext|>")
    backend.post_processor = processors.RobertaProcessing(("<|endoftext|>", end), ("<|startoftext|>", start),
                                                          trim_offsets=False, add_prefix_space=False)
    return backend


def bert_wordpiece_tokenizer(vocab: Path):
    """BERT's tokenizer pipeline over its vocab.txt, as transformers builds it (`BertTokenizerFast`): BERT's
    normalizer (control characters removed, CJK characters split off, lowercased and accents stripped unless the
    tokenizer_config.json beside says `do_lower_case: false`), BERT's pre-tokenizer, WordPiece, `[CLS]` … `[SEP]`."""
    import json

    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    config_file = vocab.with_name("tokenizer_config.json")
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    lowercase = config.get("do_lower_case", True)
    backend = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=config.get("strip_accents"), lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if backend.token_to_id(t) is not None]
    backend.add_special_tokens([AddedToken(t, special=True) for t in special])
    if "[CLS]" in special and "[SEP]" in special:
        backend.post_processor = processors.BertProcessing(("[SEP]", backend.token_to_id("[SEP]")),
                                                           ("[CLS]", backend.token_to_id("[CLS]")))
    return backend
