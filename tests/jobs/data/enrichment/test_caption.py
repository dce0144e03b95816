"""The captioner stage run for real: a tiny random image-to-text model saved here, a Ray actor pool."""

import pytest
from conftest import jpeg

from tipslab.jobs.data.enrichment.caption import caption_shards
from tipslab.jobs.data.shards.format import read_manifest, write_shards
from tipslab.jobs.data.shards.rewrite import iter_rows

WORDS = ["a", "red", "blue", "cube", "sphere", "on", "the", "table", "small", "large", "metal", "shiny"]


def save_tiny_captioner(path, positions: int = 32) -> None:
    """A VisionEncoderDecoder (1-layer ViT + 1-layer GPT-2 of `positions` text positions, random
    weights), a word-level tokenizer built with `tokenizers`, and a ViT image processor, saved with
    save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    ).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    torch.manual_seed(0)
    encoder = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    decoder = GPT2Config(
        vocab_size=len(vocab),
        n_positions=positions,
        n_embd=32,
        n_layer=1,
        n_head=2,
        add_cross_attention=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id = 1, 0, 2
    # Random weights would happily emit <bos> forever; only words (and <eos> after two) may come.
    gen.suppress_tokens, gen.min_new_tokens = [0, 1, 3], 2
    model.save_pretrained(path)


def test_caption_stage_fills_synthetic_captions(ray_session, tmp_path):
    save_tiny_captioner(tmp_path / "model")
    rows = [
        {
            "key": f"k{i}",
            "image": jpeg(24 + 8 * i, 32),
            "web_caption": f"web {i}",
            "synthetic_caption": None,
            "tags": ["cube"] if i else [],
            "width": 24 + 8 * i,
            "height": 32,
        }
        for i in range(5)
    ]
    rows[3]["image"], rows[3]["synthetic_caption"] = b"not an image", "kept"
    write_shards(rows, str(tmp_path / "set"), source="made", rows_per_shard=2)
    result = caption_shards(
        str(tmp_path / "set"),
        str(tmp_path / "model"),
        out=str(tmp_path / "out"),
        batch_size=2,
        max_new_tokens=6,
        max_pixels=10**6,
        max_bad_fraction=0.5,
    )
    out = list(iter_rows(str(tmp_path / "out")))
    assert [r["key"] for r in out] == [r["key"] for r in rows]  # order kept
    for before, after in zip(rows, out):
        assert {k: v for k, v in after.items() if k != "synthetic_caption"} == {
            k: v for k, v in before.items() if k != "synthetic_caption"
        }
        if before["key"] == "k3":
            assert after["synthetic_caption"] == "kept"
        else:
            caption = after["synthetic_caption"]
            assert isinstance(caption, str) and caption.strip() and set(caption.split()) <= set(WORDS)
    assert (result["rows"], result["captioned"], result["gpus_per_actor"]) == (5, 4, 0)
    assert result["bad_rows"]["counts"] == {"not_an_image": 1} and result["bad_rows"]["keys"] == ["k3"]
    assert read_manifest(tmp_path / "out")["source"] == "made+caption:model"
    assert read_manifest(tmp_path / "set")["num_rows"] == 5  # the source is left as it was


def save_tiny_prompted_captioner(path) -> None:
    """A PaliGemma-kind captioner (the paper's kind: it takes a prompt beside the image): a 1-layer
    SigLIP tower and a 1-layer Gemma decoder with random weights, its processor with a word-level
    tokenizer, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        GemmaConfig,
        GemmaTokenizerFast,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, "<image>": 4}
    vocab.update({w: i + 5 for i, w in enumerate(WORDS + ["caption", "en"])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tokenizer = GemmaTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = SiglipImageProcessor(size={"height": 32, "width": 32})
    images.image_seq_length = 16  # (32 / 8) ** 2 patches, one image token each
    PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    vision = SiglipVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    vision.projection_dim = 32
    text = GemmaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=4, projection_dim=32, hidden_size=32
    )
    model = PaliGemmaForConditionalGeneration(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = 0, 2
    gen.suppress_tokens, gen.min_new_tokens = [0, 1, 3, 4, vocab["caption"], vocab["en"]], 2  # words only
    model.save_pretrained(path)


def test_a_prompt_driven_captioner_gets_its_prompt_and_only_its_continuation_is_kept(tmp_path, one_torch_thread):
    """The captioner's own batch call, in this process: the shards' path through Ray Data is the
    test above's."""
    import pyarrow as pa

    from tipslab.jobs.data.enrichment.caption import Captioner

    save_tiny_prompted_captioner(tmp_path / "model")
    captioner = Captioner(str(tmp_path / "model"), max_new_tokens=4, max_pixels=10**6, prompt="caption en")
    batch = pa.table(
        {
            "key": [f"k{i}" for i in range(3)],
            "image": [jpeg(32, 24 + 8 * i) for i in range(2)] + [b"not an image"],
            "synthetic_caption": pa.array([None] * 3, pa.string()),
        }
    )
    out = captioner(batch)
    captions, errors = out.column("synthetic_caption").to_pylist(), out.column(out.schema.names[-1]).to_pylist()
    assert errors[:2] == [None, None] and errors[2] is not None and captions[2] is None
    for caption in captions[:2]:
        # Generated words only: neither the prompt nor the image tokens that the processor put before it.
        assert caption and "caption" not in caption and "en" not in caption.split() and "<image>" not in caption
        assert any(w in caption for w in WORDS)


def test_missing_model_folder_is_one_error(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        caption_shards(str(tmp_path), str(tmp_path / "nope"), max_pixels=1, max_bad_fraction=0)
