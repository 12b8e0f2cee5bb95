"""`align chat`: multi-turn through the chat template, streamed, /reset and /exit, from piped input."""

from __future__ import annotations

from click.testing import CliRunner

from align.chat import Chat
from align.cli import cli
from tests.test_export import sft_run  # noqa: F401  (a tiny SFT run to chat with)


def test_a_conversation_keeps_its_turns_streams_its_answers_and_resets(tiny_model_dir):
    chat = Chat(str(tiny_model_dir), system="Be brief.", temperature=0, max_new_tokens=8)
    pieces: list[str] = []
    first = chat.reply("What is 2 + 3?", pieces.append)
    assert len(pieces) > 1 and "".join(pieces).strip() == first  # streamed piece by piece, and the same answer
    chat.reply("And 4 + 4?", lambda _: None)
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[2]["content"] == first
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
    # greedy: the same first question after a reset gets the same answer
    assert chat.reply("What is 2 + 3?", lambda _: None) == first


def test_the_command_chats_with_a_stage_from_piped_input(sft_run):  # noqa: F811
    result = CliRunner().invoke(cli, ["chat", str(sft_run), "--temperature", "0", "--max-new-tokens", "6"],
                                input="Hello\n/reset\nWhat is 7 + 5?\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.count("model> ") == 2 and "(a new conversation)" in out and "never read" not in out
    assert "you> Hello" in out and "you> What is 7 + 5?" in out


def test_a_reward_model_or_a_missing_path_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["chat", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: model 'chat': ")
