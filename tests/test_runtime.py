"""The CWM runtime against transformers' CwmForCausalLM (eager attention) on tiny random models."""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers

from tests.conftest import skip_or_fail
from tracekit.model.cache import KVCache
from tracekit.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tracekit.model.config import ConfigError, CwmConfig
from tracekit.model.generation import generate
from tracekit.model.modeling import CwmForCausalLM
from tracekit.model.prompt_lookup import PromptLookup, agreement

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
            max_position_embeddings=512, bos_token_id=1, eos_token_id=[2], pad_token_id=0,
            layer_types=["full_attention", "sliding_attention", "sliding_attention",
                         "full_attention"])


def pair(seed: int = 0, dtype=torch.float32, **overrides):
    """The same random weights in transformers' model and in ours."""
    torch.manual_seed(seed)
    fields = {**TINY, **overrides}
    reference = transformers.CwmForCausalLM(
        transformers.CwmConfig(**fields, attn_implementation="eager")).eval().to(dtype)
    ours = CwmForCausalLM(CwmConfig(**fields, dtype=str(dtype).removeprefix("torch."))).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.to(dtype)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every tensor of the two state dicts equal bit for bit (tied ones compared once each)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("seed, length", [(0, 24), (1, 40), (2, 33)])  # 3-5x the window
def test_logits_and_loss_match_transformers_in_fp32(seed, length):
    reference, ours = pair(seed)
    ids = torch.randint(0, 300, (2, length))
    labels = ids.clone()
    labels[0, :4] = -100
    with torch.no_grad():
        ref, out = reference(ids, labels=labels), ours(ids, labels=labels)
    assert (ref.logits - out.logits).abs().max() <= 1e-5
    # the loss is a mean of log-softmax over logits that agree to 1e-5; the two
    # implementations reduce in their own order, so the last bits depend on the CPU's kernels
    # (5.6974 differed in the last bit between two machines): 1e-5 is ~100 ulp at this size
    assert abs(ref.loss.item() - out.loss.item()) <= 1e-5


def test_logits_match_transformers_in_bf16():
    reference, ours = pair(3, torch.bfloat16)
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        diff = (reference(ids).logits.float() - ours(ids).logits.float()).abs().max()
    assert diff <= 2e-2


def test_default_layer_rule_and_more_layers():
    reference, ours = pair(4, num_hidden_layers=6, layer_types=None)
    assert ours.config.layer_types == ["full_attention", "sliding_attention",
                                       "sliding_attention", "sliding_attention",
                                       "full_attention", "sliding_attention"]
    ids = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        assert (reference(ids).logits - ours(ids).logits).abs().max() <= 1e-5


def test_prefill_then_decode_through_the_cache_equals_one_forward():
    _, ours = pair(5)
    ids = torch.randint(0, 300, (2, 32))  # 4x the sliding window
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache(ours.config, 2, 40, torch.float32)
        steps = [ours(ids[:, :12], cache=cache).logits]
        steps += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(12, 20)]
        steps.append(ours(ids[:, 20:], cache=cache).logits)  # a chunk longer than the window
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5
    held = [cache.positions_held(layer) for layer in range(4)]
    assert held == [32, 8, 8, 32]  # sliding layers keep only the window
    assert cache.keys[1].shape[2] == 8


@pytest.mark.parametrize("fast", [False, True])
def test_a_cache_within_the_window_reads_sliding_layers_as_full_ones(fast):
    """A cache no longer than the window: its sliding layers hold every position in order
    and attend without a mask, with the logits of one forward (padding included)."""
    _, ours = pair(5, sliding_window=16)
    ours.fast = fast
    ids = torch.randint(3, 300, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :3] = 0  # row 1 is left-padded
    with torch.no_grad():
        full = ours(ids, attention_mask=mask).logits
        cache = KVCache(ours.config, 2, 16, torch.float32)
        assert cache.windows_reach_all
        assert not KVCache(ours.config, 2, 17, torch.float32).windows_reach_all
        steps = [ours(ids[:, :9], attention_mask=mask[:, :9], cache=cache).logits]
        steps += [ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache).logits
                  for t in range(9, 16)]
    assert (torch.cat(steps, 1) - full)[mask.bool()].abs().max() <= 1e-5
    assert cache.keys[1].shape[2] == 16 and cache.positions_held(1) == 16


@pytest.mark.parametrize("window", [None, 5, 300])
def test_blocked_attention_equals_one_call_over_everything(window):
    """A long masked sequence (packed documents, left padding) attended block by block, each
    block given only the keys it can reach, gives the outputs and gradients of one SDPA call
    over every key, on full and sliding layers, at a length that is no multiple of the block."""
    import torch.nn.functional as F

    from tracekit.model.modeling import ATTENTION_BLOCK, blocked_attention

    torch.manual_seed(0)
    length = 2 * ATTENTION_BLOCK + 37
    q = torch.randn(2, 4, length, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, length, 8, requires_grad=True) for _ in range(2))
    documents = torch.sort(torch.randint(0, 4, (2, length)), dim=1).values
    position = torch.arange(length)
    allowed = (position[None, :] <= position[:, None])[None] & (
        documents[:, :, None] == documents[:, None, :])
    if window is not None:
        allowed = allowed & (position[None, :] > position[:, None] - window)[None]
    allowed[1, :, :20] = False  # row 1 starts with padding: its first queries see nothing real
    allowed[1, :20, :20] = torch.eye(20, dtype=torch.bool)
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    mask = mask[:, None]
    outputs, gradients = [], []
    for attend in (lambda: blocked_attention(q, k, v, mask, window, 8 ** -0.5),
                   lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                          enable_gqa=True, scale=8 ** -0.5)):
        out = attend()
        out.pow(2).sum().backward()
        outputs.append(out.detach())
        gradients.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-5
    for blocked, whole in zip(*gradients):
        assert (blocked - whole).abs().max() <= 1e-4


def test_the_fast_path_on_long_packed_rows_matches_the_exact_one():
    """A model on two packed rows longer than an attention block (the training path, blocked)
    gives the logits of the exact path (one masked product over every key)."""
    _, ours = pair(9, sliding_window=40)
    ids = torch.randint(3, 300, (2, 600))
    documents = torch.sort(torch.randint(0, 3, (2, 600)), dim=1).values
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    index = torch.arange(600).expand(2, -1)
    positions = index - torch.where(starts, index, 0).cummax(dim=1).values
    logits = []
    with torch.no_grad():
        for fast in (False, True):
            ours.fast = fast
            logits.append(ours(ids, position_ids=positions, document_ids=documents).logits)
    assert (logits[0] - logits[1]).abs().max() <= 1e-4


def test_compiled_decode_steps_follow_the_eager_ones(monkeypatch):
    """generate with model.compile_decode: the same tokens and log-probs (to rounding) as the
    eager fast path, on a cache whose sliding layers wrap their ring, one whose window reaches
    every position, and a session's cache with a rewind margin; weights changed after compiling
    are read as changed."""
    import tracekit.model.generation
    from tracekit.model.compiled_decode import decode_steps

    steps = []

    def counted(*args):
        step = decode_steps(*args)
        return lambda *inputs: steps.append(1) or step(*inputs)

    monkeypatch.setattr(tracekit.model.generation, "decode_steps", counted)
    _, ours = pair(7)
    ours.fast = True
    prompt = [5, 6, 7, 8, 9, 10, 11]

    def both(new, make_cache=None, cached=0, prompt=prompt):
        """Eager and compiled runs; with make_cache, `cached` prompt tokens are run first."""
        runs = []
        for compiled in (False, True):
            ours.compile_decode = compiled
            cache = make_cache() if make_cache else None
            if cached:
                generate(ours, [prompt[:cached]], 1, cache=cache)
            runs.append(generate(ours, [prompt[cached:]], new, cache=cache)[0])
        eager, compiled = runs
        assert len(eager.tokens) == new and compiled.tokens == eager.tokens
        assert max(abs(a - b) for a, b in zip(compiled.logprobs, eager.logprobs)) <= 1e-4
        return eager, cache

    config = ours.config
    wraps, _ = both(20)  # a cache of 27 positions: the window of 8 wraps the ring
    assert len(steps) == 19  # every step after the prompt's, compiled runs only
    _, within = both(6, lambda: KVCache(config, 1, 8, torch.float32), 1, prompt[:3])
    assert within.windows_reach_all and within.length == 8
    ringed, session = both(30, lambda: KVCache(config, 1, 64, torch.float32, rewind_margin=4),
                           3)
    assert session.ring_index.numel() == 12 and session.length == 36
    # a margin that makes the ring as long as the cache: read like a full layer, window masked
    unwrapped, whole = both(30, lambda: KVCache(config, 1, 64, torch.float32, rewind_margin=64),
                            3)
    assert whole.slots_are_positions and not whole.windows_reach_all
    assert unwrapped.tokens == ringed.tokens
    assert max(abs(a - b) for a, b in zip(unwrapped.logprobs, ringed.logprobs)) <= 1e-4
    with torch.no_grad():
        ours.lm_head.weight.mul_(0.5)
    changed, _ = both(20)
    assert changed.logprobs != wraps.logprobs


def test_greedy_generation_matches_transformers_generate():
    reference, ours = pair(6)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22]]
    ours_out = generate(ours, prompts, 64)
    padded = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 0, 20, 21, 22]])
    ref = reference.generate(padded, attention_mask=(padded != 0).long(), max_new_tokens=64,
                             do_sample=False, eos_token_id=None, pad_token_id=0)[:, 7:]
    assert [g.tokens for g in ours_out] == ref.tolist()
    for prompt, g in zip(prompts, ours_out):  # and each prompt alone
        alone = reference.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        assert g.tokens == alone.tolist() and len(g.logprobs) == 64
        assert all(lp <= 0 for lp in g.logprobs)


def test_sampling_is_seeded_and_stops_on_stop_ids():
    _, ours = pair(7)
    a = generate(ours, [[5, 6, 7]], 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    b = generate(ours, [[5, 6, 7]], 20, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert a[0].tokens == b[0].tokens
    greedy = generate(ours, [[5, 6, 7]], 20)[0].tokens
    stop = greedy[3]
    stopped = generate(ours, [[5, 6, 7]], 20, stop_ids=(stop,))[0]
    assert stopped.tokens == greedy[:greedy.index(stop) + 1] and stopped.stopped


def test_prompt_lookup_guesses_as_a_scan_of_the_whole_sequence_would():
    """Random extends, truncates and guesses, each guess against a brute-force scan: the
    longest tail (up to 4 tokens) that occurred before, at its latest occurrence, copied on."""
    import random

    def scanned(tokens: list[int], count: int) -> list[int]:
        for n in range(min(4, len(tokens)), 0, -1):
            tail = tokens[len(tokens) - n:]
            ends = [e for e in range(n - 1, len(tokens) - 1) if tokens[e - n + 1:e + 1] == tail]
            if ends:
                copied = tokens[ends[-1] + 1:]
                return [copied[i % len(copied)] for i in range(count)]
        return []

    rng = random.Random(7)
    for _ in range(300):
        alphabet = rng.choice([2, 5, 30])
        lookup = PromptLookup([rng.randrange(alphabet) for _ in range(rng.randrange(12))])
        for _ in range(25):
            lookup.extend([rng.randrange(alphabet) for _ in range(rng.randrange(4))])
            if rng.random() < 0.3:
                lookup.truncate(rng.randrange(len(lookup.tokens) + 1))
            count = rng.randrange(8)
            assert lookup.guess(count) == scanned(lookup.tokens, count), lookup.tokens


def test_prompt_lookup_guesses_copy_the_latest_longest_match():
    assert PromptLookup([1, 2, 3, 9, 1, 2]).guess(4) == [3, 9, 1, 2]
    assert PromptLookup([1, 2, 5, 8, 2, 6, 3, 1, 2]).guess(1) == [5]  # "1 2", not "2" -> 6
    assert PromptLookup([4, 1, 2, 5, 1, 2]).guess(3) == [5, 1, 2]  # the latest "1 2" but one
    assert PromptLookup([3, 7, 7, 7]).guess(5) == [7] * 5  # a run continues (overlapping copy)
    assert PromptLookup([3, 8, 1, 2]).guess(4) == []  # 2 never came before
    lookup = PromptLookup([5, 6], longest=2)
    lookup.extend([7, 5, 6])
    assert lookup.guess(2) == [7, 5]
    lookup.extend([9, 5, 6])
    assert lookup.guess(2) == [9, 5]
    lookup.truncate(5)  # back to 5 6 7 5 6: as if never extended
    assert lookup.guess(2) == [7, 5] and lookup.tokens == [5, 6, 7, 5, 6]
    lookup.truncate(2)
    assert lookup.guess(2) == []
    lookup.extend([5])
    assert lookup.guess(3) == PromptLookup([5, 6, 5], longest=2).guess(3) == [6, 5, 6]
    assert agreement([1, 2, 3], [1, 2, 4]) == 2 and agreement([1, 2], [1, 2, 3]) == 2
    assert agreement([1, 2, 3], [1, 2]) == 2 and agreement([7], [1]) == agreement([], [1]) == 0


@pytest.mark.parametrize("fast", [False, True])
def test_drafted_generation_gives_the_greedy_tokens_in_fewer_forwards(fast):
    """Prompt-lookup guesses checked in one forward (draft_tokens): the tokens, log-probs (to
    rounding), stops and cache contents of one-token-per-forward greedy decoding, with wrong
    guesses forgotten, also in a sliding ring that keeps only `rewind_margin` extra positions."""
    reference, ours = pair(6)
    ours.fast = fast
    fed = []  # tokens per forward
    hook = ours.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append((args[0] if args else kwargs["input_ids"]
                                                 ).shape[1]), with_kwargs=True)
    try:
        for prompt in ([5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 20, 21, 22, 20, 21]):
            fed.clear()
            plain = generate(ours, [prompt], 64)[0]
            assert fed[1:] == [1] * 63
            fed.clear()
            drafted = generate(ours, [prompt], 64, draft_tokens=4)[0]
            assert drafted.tokens == plain.tokens
            assert max(abs(a - b) for a, b in zip(drafted.logprobs, plain.logprobs)) <= 1e-5
            # guesses were taken (fewer forwards) and refused (more tokens run than kept)
            assert len(fed) < 56 and sum(fed) - len(prompt) > 63 and max(fed) <= len(prompt) + 4
        whole = reference.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        assert drafted.tokens == whole.tolist()
    finally:
        hook.remove()
    # a cached prefix and a ring (window 8) that keeps 4 positions to rewind: the cache ends
    # where one-token decoding leaves it, and continuing from it gives the rest of the run
    prompt, greedy = [5, 6, 7, 8, 9, 10, 11], generate(ours, [[5, 6, 7, 8, 9, 10, 11]], 60)[0]
    cache = KVCache(ours.config, 1, 128, torch.float32, rewind_margin=4)
    generate(ours, [prompt[:3]], 1, cache=cache)
    lookup = PromptLookup(prompt[:3])
    first = generate(ours, [prompt[3:]], 40, cache=cache, draft_tokens=4, lookup=lookup)[0]
    assert first.tokens == greedy.tokens[:40] and cache.length == len(prompt) + 39
    assert lookup.tokens == prompt + first.tokens  # extended with every token chosen
    lookup.truncate(cache.length)
    rest = generate(ours, [first.tokens[-1:]], 20, cache=cache, draft_tokens=4,
                    lookup=lookup)[0]
    assert rest.tokens == greedy.tokens[40:]
    # a stop token chosen in a forward that also ran guesses after it ends the generation
    # there, and the cache forgets those guesses
    stop = greedy.tokens[7]
    cache = KVCache(ours.config, 1, 128, torch.float32, rewind_margin=4)
    stopped = generate(ours, [prompt], 60, stop_ids=(stop,), cache=cache, draft_tokens=4)[0]
    assert stopped.stopped and stopped.tokens == greedy.tokens[:greedy.tokens.index(stop) + 1]
    assert cache.length == len(prompt) + len(stopped.tokens) - 1
    # a ring with no rewind margin cannot forget guesses: decoding goes one token at a time
    cache = KVCache(ours.config, 1, 128, torch.float32)
    fed.clear()
    hook = ours.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    try:
        assert generate(ours, [prompt], 30, cache=cache, draft_tokens=4)[0].tokens == \
            greedy.tokens[:30]
    finally:
        hook.remove()
    assert fed[1:] == [1] * 29


def test_checkpoints_load_both_ways(tmp_path):
    reference, _ = pair(8)
    reference.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    ours = load_checkpoint(tmp_path / "hf", dtype=torch.float32)
    ids = torch.randint(0, 300, (1, 20))
    # loading is exact (every weight bit for bit); the two forwards agree to rounding, as in
    # the parity tests above (bit equality of two implementations' reductions is the CPU's luck)
    assert same_weights(reference, ours)
    with torch.no_grad():
        assert (reference(ids).logits - ours(ids).logits).abs().max() <= 1e-5
    save_checkpoint(ours, tmp_path / "ours", max_shard_bytes=100_000)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "ours").iterdir()}
    assert len(modes) == 1  # the shards readable as config.json is (safetensors writes 0600)
    again = transformers.CwmForCausalLM.from_pretrained(tmp_path / "ours",
                                                        attn_implementation="eager").eval()
    assert same_weights(again, ours)
    with torch.no_grad():
        assert (again(ids).logits - ours(ids).logits).abs().max() <= 1e-5


def test_released_32b_shapes_on_the_meta_device():
    layer_types = ["full_attention" if i % 4 == 0 or i == 63 else "sliding_attention"
                   for i in range(64)]
    with torch.device("meta"):
        model = CwmForCausalLM(CwmConfig(layer_types=layer_types))
    assert sum(p.numel() for p in model.parameters()) == 32_581_097_472
    windows = [layer.self_attn.window for layer in model.model.layers]
    assert windows.count(None) == 17 and windows[63] is None and windows[1] == 8192


@pytest.fixture
def saved(tmp_path):
    reference, _ = pair(9)
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    return tmp_path


def _shard_with(directory, name):
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    return directory / index["weight_map"][name], index


def test_bad_checkpoint_missing_tensor(saved):
    _, index = _shard_with(saved, "model.norm.weight")
    del index["weight_map"]["model.norm.weight"]
    (saved / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing tensor 'model.norm.weight'"):
        load_checkpoint(saved)


def _edit_config(directory, **fields):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **fields}))


def test_bad_checkpoint_wrong_shape(saved):
    _edit_config(saved, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight' "
                                              r"has shape \(\d+, \d+\), the config needs"):
        load_checkpoint(saved)


def test_bad_checkpoint_truncated_file(saved):
    shard, _ = _shard_with(saved, "lm_head.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(saved)


def test_bad_checkpoint_config_field(saved):
    _edit_config(saved, num_key_value_heads=3)
    with pytest.raises(CheckpointError, match="num_key_value_heads: 3 does not divide") as error:
        load_checkpoint(saved)
    assert str(error.value).startswith(f"{saved / 'config.json'}: num_key_value_heads")
    (saved / "config.json").write_text('{"model_type": "cwm",')
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(saved)
    assert str(error.value).startswith(f"{saved / 'config.json'}: not valid JSON")


@pytest.mark.parametrize("device, dtype, words", [
    ("tpu", None, "'tpu' is not a device"),
    (f"cuda:{torch.cuda.device_count()}", None, "cuda"),  # one GPU more than this machine has
    ("meta", None, "checkpoints load on cpu, cuda, cuda:N or mps"),
    ("cpu", torch.float16, "float16 is slow or unsupported on CPU")])
def test_bad_checkpoint_device_or_dtype(saved, device, dtype, words):
    """Refused before any file is read, in one line (not blamed on the files)."""
    for weights in saved.glob("*.safetensors"):  # read first, these would fail as truncated
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(words)) as error:
        load_checkpoint(saved, device, dtype)
    message = str(error.value)
    assert "\n" not in message and "truncated" not in message
    assert (device if dtype is None else "float16") in message


@pytest.mark.parametrize("fields, words", [
    ({"hidden_size": 0}, "hidden_size: must be a positive integer"),
    ({"layer_types": ["full_attention"]}, "layer_types: 1 entries for 64 layers"),
    ({"layer_types": ["global"] * 64}, "layer_types: unknown type 'global'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type: 'yarn'"),
    ({"dtype": "int8"}, "dtype: 'int8'"),
])
def test_config_errors_name_the_field(fields, words):
    with pytest.raises(ConfigError, match=words):
        CwmConfig(**fields)


def test_config_reads_legacy_rope_fields_and_torch_dtype():
    config = CwmConfig.from_dict({"model_type": "llama", "rope_theta": 500000.0,
                                  "rope_scaling": {"type": "llama3", "factor": 8.0,
                                                   "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192},
                                  "torch_dtype": "float32", "num_hidden_layers": 8})
    assert config.rope_parameters["rope_type"] == "llama3"
    assert config.rope_parameters["rope_theta"] == 500000.0 and config.dtype == "float32"
    assert config.layer_types.count("full_attention") == 2
    with pytest.raises(ConfigError, match="model_type"):
        CwmConfig.from_dict({"model_type": "gpt2"})


def test_rewinding_the_cache_equals_never_having_gone_there():
    _, ours = pair(10)
    ids = torch.randint(0, 300, (1, 30))
    other = torch.randint(0, 300, (1, 6))
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache(ours.config, 1, 40, torch.float32, rewind_margin=6)
        ours(ids[:, :24], cache=cache)
        ours(other, cache=cache)  # a branch we step back from
        cache.rewind(24)
        rest = ours(ids[:, 24:], cache=cache).logits
    assert (rest - full[:, 24:]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="larger rewind_margin"):
        cache.rewind(20)


@pytest.mark.parametrize("onednn", ["default", "every weight"])
def test_fast_path_is_close_to_the_exact_one(onednn, monkeypatch):
    """The tiny model's weights are below oneDNN's thresholds; "every weight" sends them all
    through oneDNN (one row) and its blocked copies (more rows), as large models' are."""
    import tracekit.model.modeling

    if onednn == "every weight":
        if tracekit.model.modeling.ONEDNN_LINEAR is None:
            skip_or_fail("this torch has no oneDNN (the CPU build the Makefile pins has it)")
        monkeypatch.setattr(tracekit.model.modeling, "ONEDNN_MIN_WEIGHT", 0)
        monkeypatch.setattr(tracekit.model.modeling, "ONEDNN_PACK_MIN_WEIGHT", 0)
    _, ours = pair(11)
    with torch.no_grad():
        for length in (1, 2, 5, 8, 9, 30):  # around the window, with and without a cache
            ids = torch.randint(0, 300, (2, length))
            ours.fast = False
            exact = ours(ids).logits
            ours.fast = True
            assert (ours(ids).logits - exact).abs().max() <= 1e-4
            cache = KVCache(ours.config, 2, length + 1, torch.float32)
            assert (ours(ids, cache=cache).logits - exact).abs().max() <= 1e-4
            one_row = KVCache(ours.config, 1, length, torch.float32)  # decode, one row a step
            steps = [ours(ids[:1, t:t + 1], cache=one_row).logits for t in range(length)]
            assert (torch.cat(steps, 1) - exact[:1]).abs().max() <= 1e-4


def test_the_blocked_weight_copy_follows_the_weights(monkeypatch):
    import tracekit.model.modeling

    if tracekit.model.modeling.ONEDNN_LINEAR is None:
        skip_or_fail("this torch has no oneDNN (the CPU build the Makefile pins has it)")
    monkeypatch.setattr(tracekit.model.modeling, "ONEDNN_PACK_MIN_WEIGHT", 0)
    _, ours = pair(13)
    _, other = pair(14)
    ids = torch.randint(0, 300, (1, 6))
    ours.fast = True
    with torch.inference_mode():
        ours(ids)  # the blocked copies are made here
    with torch.no_grad():
        ours.lm_head.weight.mul_(2)  # changed in place
        ours.fast = False
        expected = ours(ids).logits
        ours.fast = True
        assert (ours(ids).logits - expected).abs().max() <= 1e-4
        ours.load_state_dict(other.state_dict())  # replaced by another model's
        other.fast = False
        assert (ours(ids).logits - other(ids).logits).abs().max() <= 1e-4
    with torch.inference_mode():  # weights made under inference_mode keep no version count
        made_there = CwmForCausalLM(ours.config).eval()
        made_there.load_state_dict(other.state_dict())
        made_there.fast = True
        assert (made_there(ids).logits - other(ids).logits).abs().max() <= 1e-4
    ours.train()  # with autograd, the fast path keeps to operations that have gradients
    ours(ids, labels=ids).loss.backward()
    assert ours.lm_head.weight.grad is not None


def test_gpu_benchmark_script_runs_in_smoke_mode(capsys):
    from tests.conftest import benchmark_module

    benchmark_module("gpu_runtime").main(["--smoke", "--decode", "eager,graph,compiled"])
    out = capsys.readouterr().out
    assert "CPU (smoke)" in out and "int8 products ran through" in out
    for dtype in ("float32", "int8 weight-only"):
        assert f"{dtype}, eager decode steps:" in out
        for way in ("graph", "compiled"):  # each checked against the eager steps
            line = next(x for x in out.splitlines() if x.startswith(f"{dtype}, {way} decode"))
            assert "batch-1 decode" in line and "8/8 greedy tokens the same" in line
            assert float(line.split("max |logit difference| ")[1].split(",")[0]) < 1e-4


def test_gpu_benchmark_keeps_the_other_figures_when_one_way_fails(capsys, monkeypatch):
    from tests.conftest import benchmark_module

    script = benchmark_module("gpu_runtime")
    stepper = script.stepper

    def failing(model, cache, decode):
        if decode == "graph":
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore")
        return stepper(model, cache, decode)

    monkeypatch.setattr(script, "stepper", failing)
    with pytest.raises(SystemExit) as exit:
        script.main(["--smoke", "--decode", "graph,eager", "--no-int8"])
    out = capsys.readouterr().out
    assert "float32, eager decode steps:" in out and "batch-1 decode" in out
    assert ("float32, graph decode steps: FAILED: RuntimeError: CUDA error: operation not "
            "permitted when stream is capturing\n") in out
    assert "decode steps failed: graph" in str(exit.value)


def test_a_cache_keeps_its_fixed_decode_step_until_the_weights_move():
    """decode_steps: one CacheStep per cache (on CUDA, its recorded graph), kept across calls
    while the model's weights stay where they are, made anew when one is replaced; the fixed
    step (uncompiled here) gives the forward's logits, through a ring that wraps."""
    from tracekit.model.compiled_decode import _STEPS, decode_steps

    _, ours = pair(15)
    ours.fast = True
    ids = torch.randint(3, 300, (1, 30))
    cache = KVCache(ours.config, 1, 30, torch.float32, rewind_margin=2)
    with torch.inference_mode():
        full = ours(ids).logits[0]
        ours(ids[:, :10], cache=cache)
        steps, made = [], None
        for t in range(10, 30):
            if t in (10, 20):  # a second generation on the same cache
                step = decode_steps(ours, cache, compiled=False)
                made = made or _STEPS[cache]
            steps.append(step(ids[:, t:t + 1], torch.tensor([[t]]))[0])
            assert _STEPS[cache] is made
    assert (torch.stack(steps) - full[10:]).abs().max() <= 1e-5
    with torch.no_grad():
        ours.lm_head.weight.mul_(2.0)  # in place: the same step
    decode_steps(ours, cache, compiled=False)
    assert _STEPS[cache] is made
    ours.lm_head.weight = torch.nn.Parameter(ours.lm_head.weight.detach().clone())
    decode_steps(ours, cache, compiled=False)
    assert _STEPS[cache] is not made


def test_decode_steps_without_masks_equal_the_full_forward_after_a_rewind():
    _, ours = pair(12)
    ids = torch.randint(0, 300, (1, 30))
    with torch.no_grad():
        full = ours(ids).logits
        cache = KVCache(ours.config, 1, 40, torch.float32)  # ring = one window, no margin
        ours(ids[:, :12], cache=cache)
        steps = [ours(ids[:, t:t + 1], cache=cache).logits for t in range(12, 20)]
        cache.rewind(19)  # step back one token and take it again
        steps[-1] = ours(ids[:, 19:20], cache=cache).logits
        steps += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(20, 30)]
    assert (torch.cat(steps, 1) - full[:, 12:]).abs().max() <= 1e-5


def test_int8_weight_only_quantization_keeps_the_model_close():
    from tracekit.model.quantize import Int8Linear, quantize_int8

    _, ours = pair(13)
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        reference = ours(ids).logits
        before = sum(p.numel() * p.element_size() for p in ours.parameters())
        greedy = generate(ours, [[5, 6, 7]], 8)[0].tokens
        quantize_int8(ours)
        quantized = ours(ids).logits
    assert len(generate(ours, [[5, 6, 7]], 8)[0].tokens) == len(greedy)  # runs through a cache
    assert isinstance(ours.model.layers[0].self_attn.q_proj, Int8Linear)
    linear_bytes = sum(m.weight.numel() for m in ours.modules() if isinstance(m, Int8Linear))
    assert linear_bytes < before / 4 * 0.9  # int8 weights: a quarter of their fp32 bytes
    error = (quantized - reference).abs().max() / reference.abs().max()
    assert error < 0.02
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_generation_extending_a_cached_prefix_runs_only_the_new_tokens():
    _, ours = pair(14)
    seen = []
    ours.model.embed_tokens.register_forward_hook(lambda m, inp, out: seen.append(inp[0].numel()))
    prefix, more = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [15, 16]
    whole = generate(ours, [prefix + more], 12)[0].tokens
    seen.clear()
    cache = KVCache(ours.config, 1, 64, torch.float32)
    with torch.no_grad():
        ours(torch.tensor([prefix]), cache=cache)
    assert seen == [len(prefix)]
    seen.clear()
    continued = generate(ours, [more], 12, cache=cache)[0].tokens
    assert continued == whole
    assert sum(seen) == len(more) + 11  # the continuation, then one token per step


def test_forked_branches_continue_like_separate_runs():
    _, ours = pair(15)
    prefix = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    continuations = [[20, 21], [30, 31], [40, 41]]
    cache = KVCache(ours.config, 1, 64, torch.float32)
    with torch.no_grad():
        ours(torch.tensor([prefix]), cache=cache)
    branches = generate(ours, continuations, 10, cache=cache.fork(3, max_new=12))
    for continuation, branch in zip(continuations, branches):
        assert branch.tokens == generate(ours, [prefix + continuation], 10)[0].tokens
    assert cache.length == len(prefix)  # the prefix cache itself is untouched


def test_forks_of_several_prefix_lengths_store_the_prefix_once():
    """Teacher forcing's shape: branch b continues the prefix's first lengths[b] tokens."""
    _, ours = pair(16)
    prefix = torch.randint(3, 300, (1, 40)).tolist()[0]  # 5x the sliding window
    lengths = [3, 9, 17, 26, 40]
    continuations = [[20, 21], [30, 31], [40, 41], [50, 51], [60, 61]]
    for fast in (False, True):
        ours.fast = fast
        cache = KVCache(ours.config, 1, 40, torch.float32, rewind_margin=40)
        with torch.no_grad():
            ours(torch.tensor([prefix]), cache=cache)
        forks = cache.fork(lengths, max_new=12)
        assert all(k.shape == (5, 2, 12, 16) for k in forks.keys)  # own tokens only
        branches = generate(ours, continuations, 10, cache=forks)
        for n, continuation, branch in zip(lengths, continuations, branches):
            alone = generate(ours, [prefix[:n] + continuation], 10)[0]
            assert branch.tokens == alone.tokens
            assert max(abs(a - b) for a, b in zip(branch.logprobs, alone.logprobs)) <= 1e-5
    with torch.no_grad():
        ring = KVCache(ours.config, 1, 40, torch.float32)  # sliding layers keep one window
        ours(torch.tensor([prefix]), cache=ring)
    ring.fork([40, 39], max_new=4)  # the window of position 39 is still held
    with pytest.raises(ValueError, match="rewind_margin"):
        ring.fork([38], max_new=4)


LOAD_AND_MEASURE = """
import sys, torch
from tracekit.model.checkpoint import load_checkpoint
from tracekit.model.config import CwmConfig
from tracekit.model.modeling import CwmForCausalLM
with torch.device("meta"):  # torch's one-time set-up of the meta device (~70 MB) happens here
    CwmForCausalLM(CwmConfig.from_file(sys.argv[1]))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from now
base = status("VmRSS")
model = load_checkpoint(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
touched = sum(float(p.detach().float().sum()) for p in model.parameters())  # every page in
print(status("VmHWM") - base, sum(p.numel() * p.element_size() for p in model.parameters()))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_peaks_at_about_one_shard_above_the_weights(tmp_path, dtype):
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(0)
    fields = dict(TINY, vocab_size=8000, hidden_size=256, intermediate_size=1024,
                  num_hidden_layers=8, head_dim=64, layer_types=None)
    save_checkpoint(CwmForCausalLM(CwmConfig(**fields)), tmp_path, max_shard_bytes=4 << 20)
    shard = max(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert len(list(tmp_path.glob("*.safetensors"))) > 4
    out = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(tmp_path), dtype],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    growth, weights = map(int, out.stdout.split())
    # the float() copies of the largest tensor add at most one shard more
    assert weights // 2 <= growth <= weights + 2 * shard + (16 << 20), (growth, weights, shard)


def test_a_loaded_model_does_not_live_in_its_files(tmp_path):
    """safetensors hands out views of the memory-mapped file; the loader copies them out, so
    that rewriting or truncating the checkpoint cannot change or crash a loaded model."""
    reference, _ = pair(17)
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    ours = load_checkpoint(tmp_path, dtype=torch.float32)
    mapped = []
    for line in open("/proc/self/maps"):
        if str(tmp_path) in line:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            mapped.append((start, end))
    for name, param in ours.named_parameters():
        assert not any(start <= param.data_ptr() < end for start, end in mapped), name


def _row_prefix(model_seed: int, seed: int, length: int):
    """A tiny model (ours), `length` random ids and a one-row KVCache holding all of them in
    order, what decode_rows' jobs start from."""
    _, ours = pair(model_seed)
    torch.manual_seed(seed)
    ids = torch.randint(3, 300, (length,)).tolist()
    with torch.inference_mode():
        cache = KVCache(ours.config, 1, len(ids), torch.float32, rewind_margin=len(ids))
        ours(torch.tensor([ids]), cache=cache)
    return ours, ids, cache


@pytest.mark.parametrize("fast,draft", [(False, 0), (True, 0), (True, 3)])
def test_continuous_batching_decodes_each_job_as_it_would_decode_alone(fast, draft):
    """decode_rows over prefixes of different lengths (sliding layers past their window):
    two rows, five jobs; a row whose job stops early (a stop token it writes) takes the next
    job while the other row goes on. Each job's tokens are greedy `generate`'s from its whole
    prompt, its log-probs equal to rounding, and every job comes back once; with prompt-lookup
    guesses (3 a row, from the prompt) too, though rows then run several tokens a forward and
    take back the guesses the model does not make, and the forwards are fewer."""
    from tracekit.model.generation import RowJob, decode_rows

    ours, ids, cache = _row_prefix(21, 3, 60)
    ours.fast = fast
    lengths = [12, 40, 5, 59, 23]
    alone = {n: generate(ours, [ids[:n + 1]], 14)[0] for n in lengths}
    stop = alone[40].tokens[3]  # job 40 stops on its 4th token; others may stop on it too
    alone = {n: generate(ours, [ids[:n + 1]], 14, stop_ids=(stop,))[0] for n in lengths}
    assert alone[40].stopped and len(alone[40].tokens) == 4
    assert any(len(g.tokens) == 14 for g in alone.values())
    order = []
    jobs = (RowJob(n, cache, n, [ids[n]], 14, guesses_from=ids[:n + 1]) for n in lengths)
    forwards = []
    hook = ours.register_forward_pre_hook(lambda *_: forwards.append(1))
    for n, generation in decode_rows(ours, jobs, 2, len(ids) + 16, (stop,), draft):
        order.append(n)
        assert generation.tokens == alone[n].tokens and generation.stopped == alone[n].stopped
        assert generation.logprobs == pytest.approx(alone[n].logprobs, abs=1e-4)
    hook.remove()
    assert sorted(order) == sorted(lengths) and order != lengths  # finished out of order
    steps = sum(len(g.tokens) for g in alone.values())
    assert (len(forwards) < steps / 2) if draft else (len(forwards) >= steps / 2)


@pytest.mark.parametrize("draft", [0, 3])
def test_rows_moved_into_bands_by_length_keep_their_jobs(monkeypatch, draft):
    """decode_rows with rows of very different lengths: the RowCache moves them so that each
    band of rows holds the rows of its ranks by length (the longest in the first; each band
    then reads up to its own longest), mid-decoding and more than once as short jobs replace
    finished ones, and every job still writes greedy `generate`'s tokens from its whole
    prompt."""
    from tracekit.model.cache import RowCache, _bands
    from tracekit.model.generation import RowJob, decode_rows

    ours, ids, cache = _row_prefix(23, 5, 200)
    ours.fast = True
    lengths = [5, 150, 9, 190, 30, 120, 15, 170, 60, 100, 3, 180, 8, 140, 20, 195, 2, 160]
    budgets = {n: 6 + n % 7 for n in lengths}  # rows finish at different steps
    alone = {n: generate(ours, [ids[:n + 1]], budgets[n])[0] for n in lengths}
    moves = []
    reorder = RowCache.reorder

    def counted(self):
        order = reorder(self)
        if order is not None:
            assert sorted(order) == list(range(self.active)) and order != sorted(order)
            lengths = self.lengths[:self.active].tolist()
            bands = [lengths[first:end] for first, end, _ in _bands(lengths, 1)]
            assert all(min(a) >= max(b) for a, b in zip(bands, bands[1:])), bands
            moves.append(order)
        return order

    monkeypatch.setattr(RowCache, "reorder", counted)
    jobs = (RowJob(n, cache, n, [ids[n]], budgets[n], guesses_from=ids[:n + 1])
            for n in lengths)
    done = dict(decode_rows(ours, jobs, 8, len(ids) + 16, (), draft))
    assert len(moves) >= 2
    assert sorted(done) == sorted(lengths)
    for n in lengths:
        assert done[n].tokens == alone[n].tokens, n
        assert done[n].logprobs == pytest.approx(alone[n].logprobs, abs=1e-4)


def test_a_row_job_goes_on_in_its_row_as_its_follow_says():
    """decode_rows with a `follow`: after its first generation a job keeps only part of its
    row, feeds several tokens one forward at a time, and writes again; its second generation
    equals greedy `generate` from the whole prompt that row then holds, while another job in
    the other row runs beside it, and the job is yielded once, with its last generation."""
    from tracekit.model.generation import Continuation, RowJob, decode_rows

    ours, ids, cache = _row_prefix(22, 4, 50)
    seen = []

    def follow(generation):
        seen.append(generation)
        if len(seen) == 2:
            return None
        return Continuation(keep=12, feed=ids[12:30], max_new_tokens=7)

    jobs = [RowJob("again", cache, 20, [ids[20]], 5, follow), RowJob("once", cache, 40,
                                                                      [ids[40]], 9)]
    done = dict(decode_rows(ours, jobs, 2, len(ids) + 16, ()))
    assert seen[0].tokens == generate(ours, [ids[:21]], 5)[0].tokens
    again = generate(ours, [ids[:30]], 7)[0]
    assert done["again"].tokens == seen[1].tokens == again.tokens
    assert done["again"].logprobs == pytest.approx(again.logprobs, abs=1e-4)
    assert done["once"].tokens == generate(ours, [ids[:41]], 9)[0].tokens
