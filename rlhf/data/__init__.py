"""Preference data, read once and the same way everywhere (the platform's importer included).

- :mod:`.records`: JSON Lines (gzip or not) and CSV records, and the one format detector;
- :mod:`.messages`: the rules of a conversation (roles, turns, contents);
- :mod:`.hh_rlhf`: Anthropic HH-RLHF transcripts;
- :mod:`.chat`: the text of a conversation for sampling and for scoring;
- :mod:`.pairs`: :class:`~.pairs.PreferencePair` and :func:`~.pairs.load_pairs`, each pair's
  margin set once, from its rating;
- :mod:`.mixes`: the Llama 2 data mixes of reward-model training;
- :mod:`.split`: the train / held-out split by prompt.
"""
