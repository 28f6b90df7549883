"""Ghost Attention (Llama 2, section 3.3): a system instruction that holds for a whole dialogue.

A model told in its first turn to "act as Napoleon" or to "answer in French" tends to forget it
a few turns later. GAtt fixes that with data: an instruction is attached to every user turn of
multi-turn dialogues, each assistant turn is sampled from the latest policy (which follows an
instruction it sees in the current turn), then the instruction is kept in the first user turn
only and the loss is zeroed on every earlier turn, so the model learns to answer turn t as the
instruction of turn 1 asks. Fine-tuning is the SFT stage's.

- :mod:`.instructions`: the constraints (the paper's hobbies, languages and public figures,
  randomly combined and sometimes shortened; and rule-checkable ones — lowercase only, a fixed
  first or last word — whose adherence a function measures), drawn reproducibly from a seed;
- :mod:`.data`: dialogues from MT-Bench, HH-RLHF and prompt files; sampling them turn by turn
  with the instruction in every user turn (a turn that breaks a rule-checkable instruction
  resampled, or its dialogue dropped); the SFT examples, the instruction in the first turn only;
- :mod:`.evaluation`: adherence by turn with the instruction in the first turn only;
- :mod:`.config`: the settings (GAtt's own and the SFT stage's, declared once);
- :mod:`.job`: the "gatt" stage of a job; :mod:`.cli`: ``python -m rlhf gatt``.
"""
