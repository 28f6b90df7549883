"""rlhf.gatt: instructions drawn from a seed, the rules by hand, the dialogues read, the sampling
turn by turn, the examples and their loss mask, the job end to end, and GAtt learning.

Every model is a tiny Llama of rlhf.nn.tiny (no chat template: the plain format).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlhf.__main__ import main
from rlhf.data.split import held_out
from rlhf.gatt.config import GAttConfig
from rlhf.gatt.data import (
    Dialogue,
    PolicySampler,
    SampledDialogue,
    conversation,
    gatt_accept,
    gatt_examples,
    load_dialogues,
    reply_seed,
    sample_dialogues,
    with_instruction,
)
from rlhf.gatt.evaluation import adherence_by_turn, adherence_of, format_adherence
from rlhf.gatt.instructions import (
    FAMILIES,
    FIRST_WORDS,
    PAPER_FAMILIES,
    Constraint,
    Instruction,
    begins_with,
    draw_instruction,
    ends_with,
    is_lowercase,
)
from rlhf.gatt.job import DATA_FILE, HELD_OUT_FILE, SAMPLING_FILE, instruction_for
from rlhf.hyperparameters import ConfigError
from rlhf.jobs import InputFile, JobError, RunSpec, read_events
from rlhf.nn.tiny import BUILTIN_CORPUS, build_tiny_llama, build_tokenizer
from rlhf.runner import run_job
from rlhf.sft.config import SFTConfig
from rlhf.sft.data import encode_example, load_examples
from rlhf.sft.training import train_sft
from tests.conftest import shared_path
from tests.unit.test_sft import runs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine threads that wait
    for each other at every small operation make a step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("gatt-llama") / "m")


LOWERCASE = Instruction((Constraint.of("lowercase"),), short=True)  # "Lowercase only."


# --- instructions -------------------------------------------------------------------------------


def test_an_instruction_is_drawn_from_its_seed_combined_and_sometimes_shortened():
    drawn = [draw_instruction(seed) for seed in range(300)]
    assert drawn == [draw_instruction(seed) for seed in range(300)]  # the same seed, the same
    assert draw_instruction("dialogue-7") == draw_instruction("dialogue-7")
    assert len({d.text for d in drawn}) > 150  # 200 different texts at these seeds
    sizes = [len(d.constraints) for d in drawn]
    assert set(sizes) == {1, 2} and 0.3 < sizes.count(2) / len(sizes) < 0.7
    assert 0.4 < sum(d.short for d in drawn) / len(drawn) < 0.6  # the paper: half the time
    assert {f for d in drawn for f in d.families} == set(FAMILIES)
    assert all(len(set(d.families)) == len(d.families) for d in drawn)  # distinct families
    only = [draw_instruction(s, families=PAPER_FAMILIES, max_families=1) for s in range(50)]
    assert all(len(d.constraints) == 1 and d.families[0] in PAPER_FAMILIES for d in only)
    assert not any(d.checkable for d in only)
    never_short = [draw_instruction(s, short_fraction=0.0) for s in range(50)]
    assert not any(d.short for d in never_short)
    with pytest.raises(ValueError, match="families"):
        draw_instruction(0, families=("swearing",))


def test_the_long_and_the_short_wordings_by_hand():
    napoleon = Constraint.of("figure", "Napoleon", form=1)
    french = Constraint.of("language", "French", form=1)
    assert Instruction((napoleon, french)).text == (
        "Always act as Napoleon from now on. Speak in French."
    )
    assert Instruction((napoleon, french), short=True).text == "Figure: Napoleon. Language: French."
    assert Instruction((Constraint.of("hobby", "tennis"),)).text == "You enjoy tennis."
    indeed = Constraint.of("first_word", "Indeed")
    assert indeed.long_text == 'Begin every reply with the word "Indeed".'
    assert indeed.short_text == "First word: Indeed."
    assert LOWERCASE.text == "Lowercase only."


def test_the_rules_by_hand():
    assert is_lowercase("hello there, friend. ça va?")
    assert not is_lowercase("hello There")
    assert not is_lowercase("123 ...") and not is_lowercase("")  # no letter: nothing answered
    assert begins_with("Indeed, it is.", "Indeed")
    assert begins_with("  **indeed** yes", "Indeed")  # punctuation skipped, case aside
    assert not begins_with("In deed", "Indeed") and not begins_with("Indeedy", "Indeed")
    assert not begins_with("Well, indeed.", "Indeed") and not begins_with("", "Indeed")
    assert ends_with("Go now. Cheers!", "Cheers") and not ends_with("Cheers, go.", "Cheers")
    both = Instruction((Constraint.of("lowercase"), Constraint.of("first_word", "Indeed")))
    assert both.adheres("indeed, yes") and not both.adheres("Indeed, yes")
    assert not both.adheres("yes, indeed")
    hobby = Instruction((Constraint.of("hobby", "chess"),))
    assert not hobby.checkable
    with pytest.raises(ValueError, match="rule-checkable"):
        hobby.adheres("anything")
    mixed = Instruction((Constraint.of("hobby", "chess"), Constraint.of("lowercase")))
    assert mixed.checkable and mixed.adheres("i like chess") and not mixed.adheres("I like chess")


# --- dialogues ----------------------------------------------------------------------------------


def test_dialogues_are_the_user_turns_of_mt_bench_hh_rlhf_and_prompt_files(tmp_path):
    mt_bench = tmp_path / "mt.jsonl"
    mt_bench.write_text(json.dumps({"question_id": 1, "turns": ["Write a poem.", "Shorter."]}))
    hh = tmp_path / "hh.jsonl"
    transcript = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: "
    hh.write_text(
        json.dumps({"chosen": transcript + "Knock knock.", "rejected": transcript + "No."})
    )
    prompts = tmp_path / "p.jsonl"
    messages = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    prompts.write_text(json.dumps({"messages": messages}) + "\n" + json.dumps("Just one") + "\n")
    assert [d.user_turns for d in load_dialogues(mt_bench)] == [("Write a poem.", "Shorter.")]
    assert [d.user_turns for d in load_dialogues(hh)] == [("Hi", "Tell me a joke")]
    assert [d.user_turns for d in load_dialogues(prompts)] == [("Q1", "Q2"), ("Just one",)]
    questions = load_dialogues(shared_path("data/mt-bench/question.jsonl"))
    assert len(questions) == 80 and all(len(d.user_turns) == 2 for d in questions)


class Scripted:
    """A sampler that answers each dialogue (known by its last user turn's end) from a script
    of replies, one per call, and records what it was asked."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {key: list(replies) for key, replies in script.items()}
        self.asked: list[tuple[list[dict], int]] = []

    def __call__(self, contexts, seeds):
        self.asked += list(zip(contexts, seeds, strict=True))
        replies = []
        for context in contexts:
            key = next(k for k in self.script if context[0]["content"].endswith(k))
            replies.append(self.script[key].pop(0))
        return replies


def test_turns_are_sampled_one_by_one_with_the_instruction_in_every_user_turn():
    dialogue = Dialogue(("hi", "and?", "so?"))
    sampler = Scripted({"hi": ["one", "two", "three"]})
    [result] = sample_dialogues(sampler, [dialogue], [LOWERCASE], turns=3, seed=5, every_turn=True)
    assert result.replies == ["one", "two", "three"] and result.kept
    assert result.first_try == [True, True, True]
    third, seed = sampler.asked[2]
    assert third == [
        {"role": "user", "content": "Lowercase only.\n\nhi"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "Lowercase only.\n\nand?"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "Lowercase only.\n\nso?"},
    ]
    assert seed == reply_seed(5, dialogue.key, 2, 0)
    assert [s for _, s in sampler.asked] == [reply_seed(5, dialogue.key, t, 0) for t in range(3)]
    first_only = conversation(dialogue, LOWERCASE, ["one"], every_turn=False)
    assert [m["content"] for m in first_only] == ["Lowercase only.\n\nhi", "one", "and?"]
    # Fewer turns than asked for: the dialogue ends with its last user turn.
    [short] = sample_dialogues(
        Scripted({"x": ["a", "b"]}), [Dialogue(("x", "y"))], [LOWERCASE], turns=3, seed=0,
        every_turn=True,
    )  # fmt: skip
    assert short.replies == ["a", "b"] and short.first_try == [True, True]


def test_a_reply_that_breaks_the_rule_is_resampled_and_a_dialogue_that_never_keeps_it_dropped():
    dialogues = [Dialogue(("first", "again")), Dialogue(("second", "more"))]
    script = {"first": ["Bad", "good", "fine"], "second": ["Bad", "", "Worse"]}
    sampler = Scripted(script)
    kept, dropped = sample_dialogues(
        sampler, dialogues, [LOWERCASE, LOWERCASE], turns=2, seed=0, every_turn=True,
        accept=gatt_accept(filter_adherent=True), max_resamples=2,
    )  # fmt: skip
    assert kept.replies == ["good", "fine"] and kept.first_try == [False, True]
    assert kept.resamples == 1 and kept.kept
    assert dropped.dropped_at == 1 and dropped.resamples == 2 and dropped.first_try == [False]
    attempts = [s for c, s in sampler.asked if c[0]["content"].endswith("first")]
    assert attempts[:2] == [reply_seed(0, dialogues[0].key, 0, a) for a in (0, 1)]
    # Without the filter a reply that breaks the rule is kept; a blank one never is.
    unfiltered = sample_dialogues(
        Scripted(script), dialogues, [LOWERCASE, LOWERCASE], turns=2, seed=0, every_turn=True,
        accept=gatt_accept(filter_adherent=False), max_resamples=0,
    )  # fmt: skip
    assert unfiltered[0].replies == ["Bad", "good"] and unfiltered[1].replies == ["Bad"]
    assert unfiltered[1].dropped_at == 2  # its second turn was blank


def test_a_reply_that_breaks_a_rule_is_repaired_its_first_try_still_counted():
    both = Instruction((Constraint.of("lowercase"), Constraint.of("first_word", "Indeed")))
    assert both.repair("Hello World.") == "indeed, hello world."  # lower-cased last
    assert both.adheres(both.repair("Hello World."))
    assert both.repair("indeed it is.") == "indeed it is."  # kept already: unchanged
    last = Instruction((Constraint.of("last_word", "Cheers"),))
    assert last.repair("See you.  ") == "See you. Cheers!" and last.adheres("See you. Cheers!")
    figure = Instruction((Constraint.of("figure", "Napoleon"),))
    assert figure.repair("Bonjour.") == "Bonjour."  # nothing a function can check or repair
    sampled = sample_dialogues(
        Scripted({"first": ["Bad", "Worse"]}), [Dialogue(("first", "again"))], [LOWERCASE],
        turns=2, seed=0, every_turn=True, accept=gatt_accept(filter_adherent=True),
        max_resamples=0, repair=True,
    )  # fmt: skip
    assert sampled[0].replies == ["bad", "worse"] and sampled[0].first_try == [False, False]
    assert sampled[0].kept and sampled[0].resamples == 0


def sampled_three_turns() -> SampledDialogue:
    return SampledDialogue(
        Dialogue(("hi", "and?", "so?"), "d.jsonl:1"), LOWERCASE, ["one", "two", "three"]
    )


def test_each_example_keeps_the_instruction_in_the_first_user_turn_only():
    examples = gatt_examples([sampled_three_turns(), SampledDialogue(
        Dialogue(("x", "y")), LOWERCASE, ["a"], dropped_at=2
    )])  # fmt: skip
    assert len(examples) == 3  # one per assistant turn; the dropped dialogue gives none
    for turn, example in enumerate(examples, start=1):
        users = [m["content"] for m in example.messages if m["role"] == "user"]
        assert users == ["Lowercase only.\n\nhi", "and?", "so?"][:turn]
        replies = [m["content"] for m in example.messages if m["role"] == "assistant"]
        assert replies == ["one", "two", "three"][:turn]
        assert example.train_on == "last" and example.source == f"d.jsonl:1, turn {turn}"
        assert sum("Lowercase only." in m["content"] for m in example.messages) == 1


def test_the_loss_counts_the_last_turn_only_every_earlier_turn_zeroed():
    tokenizer = build_tokenizer(BUILTIN_CORPUS)
    first, second, third = gatt_examples([sampled_three_turns()])
    assert runs(tokenizer, encode_example(tokenizer, third)) == [
        ("<s>User: Lowercase only.\n\nhi\n\nAssistant: one\n\nUser: and?\n\nAssistant: two"
         "\n\nUser: so?\n\nAssistant:", False),
        (" three</s>", True),
    ]  # fmt: skip
    assert runs(tokenizer, encode_example(tokenizer, second)) == [
        ("<s>User: Lowercase only.\n\nhi\n\nAssistant: one\n\nUser: and?\n\nAssistant:", False),
        (" two</s>", True),
    ]
    # The record's "last" wins over a run's "all".
    assert runs(tokenizer, encode_example(tokenizer, first, train_on="all")) == [
        ("<s>User: Lowercase only.\n\nhi\n\nAssistant:", False),
        (" one</s>", True),
    ]


def test_adherence_by_turn_counts_the_replies_that_keep_the_rule():
    dialogues = [Dialogue(("a1", "a2", "a3")), Dialogue(("b1", "b2"))]
    sampler = Scripted({"a1": ["yes", "No", "ok"], "b1": ["Hmm", "fine"]})
    table = adherence_of(sampler, dialogues, Constraint.of("lowercase"), turns=3, seed=0)
    assert table == [
        {"turn": 1, "responses": 2, "adhering": 1, "rate": 0.5},
        {"turn": 2, "responses": 2, "adhering": 1, "rate": 0.5},
        {"turn": 3, "responses": 1, "adhering": 1, "rate": 1.0},
    ]
    assert sampler.asked[2][0][2] == {"role": "user", "content": "a2"}  # turn 1 only
    assert format_adherence({"base": table}).splitlines() == [
        "turn  base",
        "   1  1/2 (50.0 %)",
        "   2  1/2 (50.0 %)",
        "   3  1/1 (100.0 %)",
    ]
    with pytest.raises(ValueError, match="rule-checkable"):
        adherence_of(sampler, dialogues, Constraint.of("hobby", "chess"), turns=1, seed=0)


# --- the job ------------------------------------------------------------------------------------

TOPICS = ["cats", "rain", "bread", "stars", "trains", "music", "rivers", "apples", "clocks",
          "bees", "ships", "snow"]  # fmt: skip


def synthetic_dialogues(count: int, seed: int = 0) -> list[Dialogue]:
    """Three-turn dialogues about three topics each, all different."""
    rng, found = random.Random(seed), {}
    while len(found) < count:
        a, b, c = rng.sample(TOPICS, 3)
        turns = (f"Tell me about {a}.", f"What about {b}?", f"And {c}?")
        found[turns] = Dialogue(turns, f"synthetic:{len(found)}")
    return list(found.values())


def gatt_spec(tmp_path, llama_dir, out, **config) -> RunSpec:
    data = tmp_path / "dialogues.jsonl"
    records = [{"turns": list(d.user_turns)} for d in synthetic_dialogues(20)]
    data.write_text("".join(json.dumps(r) + "\n" for r in [*records, "one turn only"]))
    values = dict(
        policy=str(llama_dir), base_model=str(llama_dir), cpu=True, turns=3, max_new_tokens=6,
        eval_fraction=0.3, max_steps=3, max_length=256, learning_rate=1e-3, micro_batch_size=4,
        min_warmup_steps=1, filter_adherent=False, prompt_batch_size=4,
    )  # fmt: skip
    return RunSpec(
        stage="gatt",
        output_dir=out,
        config=values | config,
        inputs={"dialogues": [InputFile.of(data)]},
    )


def test_the_gatt_job_samples_writes_its_data_fine_tunes_and_reports_adherence(
    llama_dir, tmp_path, capsys
):
    spec = gatt_spec(tmp_path, llama_dir, tmp_path / "run")
    metrics = run_job(spec)
    out = spec.output_dir
    dialogues = metrics["dialogues"]
    assert dialogues["read"] == 21 and dialogues["single_turn"] == 1
    assert dialogues["train"] + dialogues["held_out"] == 20 and dialogues["held_out"] > 0
    loaded = load_examples(out / DATA_FILE)
    assert loaded.format == "messages" and all(e.train_on == "last" for e in loaded.examples)
    assert len(loaded.examples) == metrics["examples"]["train"] == 3 * metrics["sampling"]["kept"]
    assert len(load_examples(out / HELD_OUT_FILE).examples) == metrics["examples"]["held_out"]
    config = GAttConfig.from_dict(spec.config)
    openings = {
        with_instruction(d.user_turns[0], instruction_for(config, d))
        for d in synthetic_dialogues(20)
    }
    for example in loaded.examples:  # each dialogue's own instruction, in its first turn only
        users = [m["content"] for m in example.messages if m["role"] == "user"]
        assert users[0] in openings
        assert all(u.startswith(("What about ", "And ")) for u in users[1:])
    assert json.loads((out / SAMPLING_FILE).read_text()) == metrics["sampling"]
    assert [row["turn"] for row in metrics["sampling"]["adherence"]] == [1, 2, 3]
    instructions = metrics["sampling"]["instructions"]
    assert sum(instructions["families"].values()) == 20 + instructions["combined"]
    held = [d for d in synthetic_dialogues(20) if held_out(d.opening, 0.3)]
    checkable = sum(instruction_for(config, d).checkable for d in held)
    assert checkable > 0 and set(metrics["adherence"]) == {"base", "trained"}
    for table in metrics["adherence"].values():
        assert [row["turn"] for row in table] == [1, 2, 3]
        assert [row["responses"] for row in table] == [checkable] * 3
    assert metrics["steps"] == 3 and metrics["metrics"]["before"]["examples"] > 0
    assert (out / "model" / "model.safetensors").is_file()
    events = read_events(out / "events.jsonl")
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3]
    assert any("sampled turn 3 of" in e.get("message", "") for e in events)

    # Resumed: the data is read back, not sampled again.
    before = (out / DATA_FILE).read_bytes()
    spec.resume = True
    again = run_job(spec)
    assert (out / DATA_FILE).read_bytes() == before and again["sampling"] == metrics["sampling"]
    assert any("resuming" in e.get("message", "") for e in read_events(out / "events.jsonl"))

    # The command builds the same job.
    data = spec.inputs["dialogues"][0].path
    args = ["gatt", "--policy", str(llama_dir), "--base", str(llama_dir), "--dialogues", str(data)]
    flags = ["--out", str(tmp_path / "cli"), "--cpu", "--max-steps", "1", "--max-new-tokens",
             "4", "--families", "lowercase", "first_word", "--eval-fraction", "0.3",
             "--no-progress"]  # fmt: skip
    assert main(args + flags) == 0
    printed = capsys.readouterr().out
    assert "GAtt on" in printed and "adherence by turn" in printed
    written = RunSpec.load(tmp_path / "cli" / "spec.json")
    assert written.stage == "gatt" and written.config["families"] == ["lowercase", "first_word"]
    assert written.config["base_model"] == str(llama_dir) and written.config["max_steps"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"inputs": {}}, "inputs.dialogues"),
        ({"options": {"x": 1}}, "options.x"),
        ({"config": {"policy": "/no/such/dir"}}, "config.policy"),
        ({"config": {"policy": ""}}, "config.policy"),
        ({"config": {"eval_fraction": 1.0}}, "inputs.dialogues"),
    ],
)
def test_a_bad_gatt_spec_is_refused_before_anything_is_written(llama_dir, tmp_path, change, field):
    spec = gatt_spec(tmp_path, llama_dir, tmp_path / "run")
    spec.inputs = change.get("inputs", spec.inputs)
    spec.options = change.get("options", {})
    spec.config |= change.get("config", {})
    with pytest.raises(JobError) as error:
        run_job(spec)
    assert error.value.field == field
    assert not spec.output_dir.exists()


def test_the_config_is_sft_s_with_gatt_s_settings():
    config = GAttConfig.from_dict({"policy": "p", "base_model": "b", "seed": 3, "turns": 2})
    sft = config.sft_config()
    assert isinstance(sft, SFTConfig) and sft.seed == 3 and sft.base_model == "b"
    assert sft.train_on == "last" and sft.learning_rate == 2e-5
    with pytest.raises(ConfigError, match="families"):
        GAttConfig(families=["swearing"])
    with pytest.raises(ConfigError, match="turns"):
        GAttConfig(turns=1)
    with pytest.raises(ConfigError, match="train_on"):
        GAttConfig(train_on="all")


# --- learning -----------------------------------------------------------------------------------


class CurrentTurnTeacher:
    """Stands in for a policy that follows an instruction it sees in the *current* user turn —
    what GAtt's data needs of the sampling model, and what a random tiny Llama cannot do (it
    never writes "Indeed" by chance): the first word an instruction in the last user turn names,
    then what the tiny model samples. Without an instruction in the current turn, the tiny
    model's text alone — the forgetting GAtt is meant to fix."""

    def __init__(self, sampler: PolicySampler):
        self.sampler = sampler

    def __call__(self, contexts, seeds):
        replies = []
        for context, reply in zip(contexts, self.sampler(contexts, seeds), strict=True):
            word = next((w for w in FIRST_WORDS if w in context[-1]["content"]), None)
            replies.append(f"{word}, {reply}" if word else reply)
        return replies


def later_turns(table: list[dict]) -> tuple[int, int]:
    """(adhering, responses) over turns 2 and later."""
    rows = [row for row in table if row["turn"] >= 2]
    return sum(r["adhering"] for r in rows), sum(r["responses"] for r in rows)


def test_gatt_teaches_a_tiny_llama_to_keep_a_first_turn_instruction_in_later_turns(
    llama_dir, tmp_path
):
    """The rule "begin every reply with the word W", W one of five words named in the first
    user turn (long or short wording). The data is sampled by :class:`CurrentTurnTeacher` with
    the instruction in every turn (filtered: all kept), then the random tiny Llama is fine-tuned
    on GAtt's examples. With the instruction in turn 1 only, the teacher and the base model keep
    it in no more than 10 % of the replies of turns 2 and 3; the fine-tuned model in at least
    90 %, picking the right one of the five words (measured: 64/64, the same at SFT seeds 0–2).
    The bar is one the variants that are not GAtt miss: fine-tuned on the same samples' first
    turns only, 19/64; with the instruction left in every turn of the examples, 55/64."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dialogues = synthetic_dialogues(160)
    train = [d for d in dialogues if not held_out(d.opening, 0.25)]
    evaluation = [d for d in dialogues if held_out(d.opening, 0.25)][:32]

    def instruction(dialogue: Dialogue) -> Instruction:
        return draw_instruction(dialogue.key, families=("first_word",), max_families=1)

    base = PolicySampler(
        AutoModelForCausalLM.from_pretrained(llama_dir).eval(),
        AutoTokenizer.from_pretrained(llama_dir),
        temperature=1.0, top_p=1.0, max_new_tokens=6, batch_size=16,
    )  # fmt: skip
    teacher = CurrentTurnTeacher(base)
    sampled = sample_dialogues(
        teacher, train, [instruction(d) for d in train], turns=3, seed=0, every_turn=True,
        accept=gatt_accept(filter_adherent=True), max_resamples=2,
    )  # fmt: skip
    examples = gatt_examples(sampled)
    assert all(s.kept for s in sampled) and len(examples) == 3 * len(train)
    config = SFTConfig(
        base_model=str(llama_dir), cpu=True, learning_rate=5e-3, micro_batch_size=8,
        max_length=256, max_steps=200, min_warmup_steps=1, eval_fraction=0.0,
    )  # fmt: skip
    train_sft(config, examples, [], tmp_path / "gatt")
    instructions = [instruction(d) for d in evaluation]
    # Room for the longest word: " Absolutely" is 9 tokens of the tiny tokenizer, and a word
    # cut short does not count.
    measure = dict(turns=3, seed=1)
    tables = {
        "teacher": adherence_of(teacher, evaluation, instructions, **measure),
        "base": adherence_by_turn(llama_dir, evaluation, instructions, **measure, cpu=True,
                                  temperature=0.7, max_new_tokens=12),
        "gatt": adherence_by_turn(tmp_path / "gatt", evaluation, instructions, **measure,
                                  cpu=True, temperature=0.7, max_new_tokens=12),
    }  # fmt: skip
    print(f"\n{len(examples)} examples from {len(train)} dialogues\n{format_adherence(tables)}")
    assert tables["teacher"][0]["rate"] == 1.0  # it keeps what it sees
    for name in ("teacher", "base"):
        adhering, responses = later_turns(tables[name])
        assert responses == 2 * len(evaluation) and adhering <= 0.1 * responses
    adhering, responses = later_turns(tables["gatt"])
    assert responses == 2 * len(evaluation) and adhering >= 0.9 * responses
