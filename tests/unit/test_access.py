"""Who may decide and steer (access.py): the principal from the uid, the one check, its
messages, and the settings that grant roles (config.yaml only)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from devflow import access
from devflow.access import DELEGATED, LABEL, SELF, Gate, Policy, Principal
from devflow.errors import Code, DevflowError
from devflow.settings import Settings

ROOT = Principal(access.OS_ACCOUNT, "root", "0")
LEADS = Gate("review", ("leads",))
POLICY = Policy(groups={"leads": ("alice", "bob"), "operators": ("ops",)},
                act_for_others=("robot",))


def refused(principal: Principal, actor: str, gates: list[Gate], *, policy: Policy = POLICY,
            operators: bool = False) -> DevflowError:
    with pytest.raises(DevflowError) as info:
        access.authorize(policy, principal, actor, "approve gate review of run r", gates,
                         operators=operators)
    assert info.value.code is Code.NOT_AUTHORIZED and info.value.exit_code == 3
    return info.value


def account(name: str) -> Principal:
    return Principal(access.OS_ACCOUNT, name)


def test_the_os_account_comes_from_the_uid_not_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in ("USER", "LOGNAME", "USERNAME", "LNAME"):
        monkeypatch.setenv(variable, "alice")
    me = access.os_account()
    assert (me.method, me.name, me.id) == ("os_account", pwd.getpwuid(os.getuid()).pw_name,
                                           str(os.getuid()))
    # the default actor is that account too: naming nobody is naming yourself
    assert Settings.load(env={"USER": "alice"}, home=str(tmp_path)).actor == me.name


def test_a_gate_without_approvers_is_anyones_and_a_name_is_a_label() -> None:
    open_gate = [Gate("check", ())]
    assert access.authorize(Policy(), ROOT, "root", "approve", open_gate) == SELF
    assert access.authorize(Policy(), ROOT, "alice", "approve", open_gate) == LABEL
    assert access.authorize(Policy(), ROOT, "alice", "pause run r", [],
                            operators=True) == LABEL


def test_approvers_by_name_and_by_group() -> None:
    assert access.authorize(POLICY, account("alice"), "alice", "approve", [LEADS]) == SELF
    assert access.authorize(POLICY, account("leads"), "leads", "approve", [LEADS]) == SELF
    error = refused(account("carol"), "carol", [LEADS])
    assert error.message == ("OS account carol may not approve gate review of run r: gate "
                             "review is restricted to leads (alice, bob)")
    assert error.hint == "who may: the approvers of gate review: leads (alice, bob)"
    refused(account("Alice"), "Alice", [LEADS])


def test_acting_for_another_needs_act_for_others_and_an_approver() -> None:
    error = refused(ROOT, "alice", [LEADS])
    assert "OS account root may not approve gate review of run r as alice" in error.message
    assert "act_for_others" in error.message
    assert "leads (alice, bob)" in error.hint and "acting for others: robot" in error.hint
    robot = account("robot")
    assert access.authorize(POLICY, robot, "alice", "approve", [LEADS]) == DELEGATED
    error = refused(robot, "mallory", [LEADS])  # a delegate acts for approvers only
    assert "OS account robot (as mallory) may not" in error.message
    # a delegate acting as itself is itself, with its own rights
    refused(robot, "robot", [LEADS])


def test_operators_steer_but_do_not_decide() -> None:
    ops = account("ops")
    assert "operators do not decide gates" in refused(ops, "ops", [LEADS]).hint
    assert access.authorize(POLICY, ops, "ops", "pause run r", [LEADS], operators=True) == SELF
    error = refused(account("carol"), "carol", [LEADS], operators=True)
    assert "the operators group: ops" in error.hint
    error = refused(account("carol"), "carol", [LEADS], operators=True,
                    policy=Policy(groups={"leads": ("alice",)}))
    assert "none configured" in error.hint


def test_every_restricted_gate_a_run_waits_at_must_allow_it() -> None:
    other = Gate("legal", ("dave",))
    refused(account("alice"), "alice", [LEADS, other], operators=True)
    assert access.authorize(POLICY, account("ops"), "ops", "abort run r", [LEADS, other],
                            operators=True) == SELF


def test_devflow_itself_is_not_checked() -> None:
    assert access.authorize(Policy(), access.system("system:timeout"), "system:timeout",
                            "reject", [LEADS]) == SELF


def test_records_and_how_people_read_them() -> None:
    record = ROOT.record(DELEGATED)
    assert record == {"method": "os_account", "principal": "root", "id": "0",
                      "attribution": "delegated"}
    assert access.describe(record, "alice") == "OS account root, acting for alice"
    assert access.describe(ROOT.record(LABEL), "bob") == "label given by OS account root"
    assert access.describe(ROOT.record(SELF), "root") == "OS account root"
    assert access.describe(access.system("system:escalation").record(SELF),
                           "system:escalation") == "system:escalation"
    assert access.describe(Principal(access.TOKEN, "alice", "t1").record(SELF), "alice") == \
        "API token t1 (alice)"
    assert access.describe(None, "alice") == "not recorded"


def test_roles_come_from_the_configuration_file_only(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "groups:\n  operators: [ops]\n  leads: alice\nact_for_others: robot\n",
        encoding="utf-8")
    s = Settings.load(env={"DEVFLOW_ACTOR": "alice"}, home=str(tmp_path))
    assert s.policy == Policy(groups={"operators": ("ops",), "leads": ("alice",)},
                              act_for_others=("robot",))
    assert s.actor == "alice"  # a name to attribute to, not who is authenticated
    (tmp_path / "config.yaml").write_text("", encoding="utf-8")
    # no variable grants a role
    env = {"DEVFLOW_ACT_FOR_OTHERS": "root", "DEVFLOW_GROUPS": "operators: [root]"}
    assert Settings.load(env=env, home=str(tmp_path)).policy == Policy()
