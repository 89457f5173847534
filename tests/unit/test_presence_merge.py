"""Merging the nodes' lists of a topic's users (pure logic)."""

from __future__ import annotations

from services.collect.presence import merged


def test_users_from_several_nodes_are_merged_sorted_and_cut_at_the_limit() -> None:
    """A user on two nodes is listed once; past the limit the list is cut and marked truncated."""
    answers = [{"users": ["b", "a"], "truncated": False}, {"users": ["a", "c"], "truncated": False}]
    assert merged(answers, 10) == (["a", "b", "c"], False)
    assert merged(answers, 2) == (["a", "b"], True)


def test_a_node_that_cut_its_own_list_makes_the_answer_truncated() -> None:
    """A node answering truncated marks the merged list truncated even under the limit."""
    assert merged([{"users": ["a"], "truncated": True}], 10) == (["a"], True)
