"""Small builders of dialogue records for tests."""


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def hh(*turns: str) -> str:
    """An HH-RLHF transcript from alternating Human / Assistant texts."""
    markers = ("\n\nHuman: ", "\n\nAssistant: ")
    return "".join(markers[index % 2] + text for index, text in enumerate(turns))
