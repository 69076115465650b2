"""`kubectl gtj why JOB`: why a job is Pending, Restarting or Failed, from its conditions,
its pods and its events, with what to do; a healthy job is said to be fine."""

from __future__ import annotations

from gaudi_kubectl.why import (
    explain,
    failed_containers,
    own_events,
    recent_events,
    render,
    unschedulable_reason,
)

from .support import NOW, ago, cond, event, job, pod, text

NO_ROOM = "0/4 nodes are available: 4 Insufficient habana.ai/gaudi."
NO_MATCH = "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector."


def test_a_job_too_big_for_the_nodes_says_so_and_names_the_fix() -> None:
    body = job(phase="Pending", workers="0/2")
    body["status"]["conditions"] = [
        cond(
            "Scheduled",
            "False",
            "InsufficientHPUs",
            f"2 of 2 workers cannot be placed; the scheduler says: {NO_ROOM}",
        )
    ]
    pods = [pod(f"tiny-worker-{i}", node=None, unschedulable=NO_ROOM) for i in range(2)]
    e = explain(body, pods, [event("Pod/tiny-worker-0", "FailedScheduling", NO_ROOM, 5)], NOW)
    assert not e.ok
    assert (
        e.summary
        == "gtj/tiny is Pending: not enough free HPUs: the workers do not fit on the nodes."
    )
    (f,) = e.findings
    assert NO_ROOM in f.detail
    assert "2 workers x 8 habana.ai/gaudi = 16 HPUs" in f.fix
    assert "kubectl scale gtj tiny --replicas=N" in f.fix
    out = text(render(e))
    assert "FailedScheduling" in out and "pod/tiny-worker-0" in out
    assert "tiny-worker-0 (+1 more)" in out  # alike pods folded


def test_an_unmatched_node_selector_is_found_from_the_pods_before_the_operator_says_it() -> None:
    body = job(phase="Pending", workers="0/2")
    body["spec"]["template"] = {"spec": {"nodeSelector": {"pool": "gaudi3-xl"}}}
    pods = [pod("tiny-worker-0", node=None, unschedulable=NO_MATCH)]
    (f,) = explain(body, pods, [], NOW).findings
    assert "NodeSelectorMismatch" in f.title
    assert "nodeSelector asks for pool=gaudi3-xl" in f.fix and "kubectl label node" in f.fix
    assert unschedulable_reason(NO_MATCH, ["gaudi3-real-1"]) == "ExcludedNodes"
    assert (
        unschedulable_reason("0/4 nodes: 4 node(s) had untolerated taint {x: y}")
        == "UntoleratedTaints"
    )
    assert unschedulable_reason("0/4 nodes: 4 Insufficient cpu") == "Unschedulable"


def test_an_image_that_cannot_be_pulled_is_one_problem_however_many_workers_wait() -> None:
    body = job(phase="Starting", workers="0/3")
    msg = 'Back-off pulling image "registry.example/gaudi-train:1"'
    pods = [
        pod(f"tiny-worker-{i}", "Pending", ready=False, waiting=("ImagePullBackOff", msg))
        for i in range(3)
    ]
    e = explain(body, pods, [], NOW)
    (f,) = e.findings
    assert f.title == "Workers cannot start: ImagePullBackOff"
    assert f.detail.startswith("tiny-worker-0 (and 2 more): ImagePullBackOff: Back-off pulling")
    assert f.fix.startswith("spec.image is registry.example/gaudi-train:1.")
    assert e.summary == "gtj/tiny is Starting: workers cannot start: ImagePullBackOff."


def test_workers_merely_starting_are_not_a_problem() -> None:
    pods = [pod("tiny-worker-0", "Pending", ready=False, waiting=("ContainerCreating", ""))]
    e = explain(job(phase="Starting", workers="0/1"), pods, [], NOW)
    assert [f.severity for f in e.findings] == ["info"]
    assert "1 of 1 workers are still starting" in e.summary


def test_a_restarting_job_says_what_failed_where_and_how_many_restarts_are_left() -> None:
    failure = {
        "reason": "Error",
        "pod": "tiny-worker-1",
        "node": "gaudi3-real-1",
        "exitCode": 137,
        "message": "container worker exited 137",
        "time": ago(8),
    }
    body = job(phase="Restarting", restarts=2, lastFailure=failure, workers="1/2")
    body["status"]["conditions"] = [
        cond("Restarting", "True", "Error", "restart 2 of 5: recreating all workers (RecreateAll)")
    ]
    e = explain(body, [pod("tiny-worker-0")], [], NOW)
    assert (
        e.summary
        == "gtj/tiny is Restarting after Error (restarts: 2 of failurePolicy.maxRestarts 5)."
    )
    restarting, last = e.findings
    assert restarting.detail == "restart 2 of 5: recreating all workers (RecreateAll)"
    assert last.title == "Last failure: Error"
    assert "tiny-worker-1 on node gaudi3-real-1, exit code 137 (killed by SIGKILL" in last.detail
    assert "`kubectl logs tiny-worker-1 -n team`" in last.fix


def test_no_feasible_node_for_replacements_says_to_repair_or_add_nodes() -> None:
    body = job(phase="Restarting", restarts=1, excludedNodes=["gaudi3-real-1"])
    body["status"]["conditions"] = [
        cond("Restarting", "True", "NoFeasibleNode", f"tiny-worker-1: {NO_MATCH}")
    ]
    first = explain(body, [], [], NOW).findings[0]
    assert first.title == "Restarting after NoFeasibleNode"
    assert "Repair or add nodes" in first.fix


def test_a_failed_job_gives_the_condition_the_last_failure_and_the_failed_workers() -> None:
    failure = {"reason": "OOMKilled", "pod": "tiny-worker-0", "exitCode": 137, "time": ago(90)}
    body = job(phase="Failed", restarts=5, lastFailure=failure)
    body["status"]["conditions"] = [
        cond(
            "Failed",
            "True",
            "RestartLimitExceeded",
            "5 restarts: failurePolicy.maxRestarts 5 reached",
        )
    ]
    pods = [pod("tiny-worker-0", "Failed", terminated=(137, "OOMKilled", ""))]
    e = explain(body, pods, [], NOW)
    assert (
        e.summary
        == "gtj/tiny Failed (RestartLimitExceeded): 5 restarts: failurePolicy.maxRestarts 5 reached"
    )
    failed, last, workers = e.findings
    assert "It restarted 5 times (failurePolicy.maxRestarts 5)" in failed.fix
    assert "raise the memory limit in spec.resources" in last.fix
    assert "tiny-worker-0: worker exit code 137 (killed by SIGKILL" in workers.detail
    assert "OOMKilled" in workers.detail


def test_a_deadline_or_a_fail_rule_says_the_job_will_not_restart() -> None:
    for reason, fix in (
        ("DeadlineExceeded", "activeDeadlineSeconds"),
        ("FailurePolicyRule", "final by your policy"),
    ):
        body = job(phase="Failed")
        body["status"]["conditions"] = [cond("Failed", "True", reason, "it failed")]
        assert fix in explain(body, [], [], NOW).findings[0].fix


def test_a_running_job_is_fine() -> None:
    e = explain(job(), [pod("tiny-worker-0"), pod("tiny-worker-1", node="gaudi3-real-1")], [], NOW)
    assert e.ok and e.findings == ()
    assert e.summary == "gtj/tiny is Running: 2/2 workers ready. Nothing to do."
    assert "2 are fine (2 running)" in text(render(e))


def test_a_running_job_whose_autoscaler_is_blind_runs_but_says_so() -> None:
    body = job()
    body["status"]["conditions"] = [
        cond("MetricsUnavailable", "True", "QueryFailed", "Prometheus: connection refused")
    ]
    e = explain(body, [pod("tiny-worker-0")], [], NOW)
    assert not e.ok and e.summary.endswith("It runs; see below.")
    assert e.findings[0].severity == "warning" and "connection refused" in e.findings[0].detail


def test_a_succeeded_job_is_fine() -> None:
    body = job(phase="Succeeded", completionTime=ago(3600))
    body["status"]["conditions"] = [cond("Succeeded", "True", "Succeeded", "all workers exited 0")]
    e = explain(body, [], [], NOW)
    assert e.ok and e.summary == "gtj/tiny Succeeded 60m ago (all workers exited 0). Nothing to do."


def test_suspended_by_the_user_or_queued_by_kueue_says_how_it_resumes() -> None:
    body = job(phase="Suspended")
    body["status"]["conditions"] = [cond("Suspended", "True", "Suspended", "spec.suspend is true")]
    (f,) = explain(body, [], [], NOW).findings
    assert "kubectl patch gtj tiny -n team --type merge" in f.fix
    body["spec"]["scheduling"] = {"queue": "team-queue"}
    body["status"]["conditions"] = [
        cond("Suspended", "True", "Queued", "waiting for admission by Kueue"),
        cond("Queued", "True", "Pending", "couldn't assign flavors: insufficient quota"),
    ]
    e = explain(body, [], [], NOW)
    assert e.summary == "gtj/tiny is queued: Kueue has not admitted it yet."
    assert "insufficient quota" in e.findings[0].detail
    assert "localqueue team-queue -n team" in e.findings[0].fix


def test_a_job_without_status_points_at_the_operator() -> None:
    e = explain(job(phase=None), [], [], NOW)
    assert e.summary == "gtj/tiny has no status yet."
    assert "app.kubernetes.io/name=gaudi-operator" in e.findings[0].fix


def test_a_worker_pod_the_api_server_refused_is_an_invalid_spec() -> None:
    body = job(phase="Pending", workers="0/2")
    body["status"]["conditions"] = [
        cond(
            "InvalidSpec",
            "True",
            "PodRejected",
            "pods is forbidden: hostPath volumes are not allowed",
        )
    ]
    first = explain(body, [], [], NOW).findings[0]
    assert "PodRejected" in first.title and "hostPath" in first.detail
    assert "change spec.template" in first.fix


def test_events_are_the_newest_in_time_order_and_warnings_outlive_normal_ones() -> None:
    events = [event("Pod/w", "Pulled", f"normal {i}", 100 - i, "Normal") for i in range(10)]
    events.insert(0, event("GaudiTrainingJob/tiny", "WorkerFailed", "old warning", 500))
    lines = recent_events(events, NOW, limit=4)
    assert len(lines) == 4
    assert "gtj/tiny: old warning" in lines[0]  # kept although oldest
    assert [line.split(": ")[-1] for line in lines[1:]] == ["normal 7", "normal 8", "normal 9"]


def test_fifty_unplaceable_workers_fit_on_one_screen() -> None:
    body = job(phase="Pending", workers="4/50")
    body["spec"]["workers"] = {"replicas": 50}
    body["status"]["conditions"] = [
        cond(
            "Scheduled",
            "False",
            "InsufficientHPUs",
            f"46 of 50 workers cannot be placed; the scheduler says: {NO_ROOM}",
        )
    ]
    pods = [pod(f"big-worker-{i}") for i in range(4)]
    pods += [pod(f"big-worker-{i}", node=None, unschedulable=NO_ROOM) for i in range(4, 50)]
    events = [event(f"Pod/big-worker-{i}", "FailedScheduling", NO_ROOM, i) for i in range(4, 50)]
    out = text(render(explain(body, pods, events, NOW)), width=120)
    assert len(out.splitlines()) <= 24, out
    assert "big-worker-4 (+45 more)" in out and "4 more are fine" in out
    assert "pod/big-worker-4 (+45 more): 0/4 nodes" in out  # alike events folded too


def test_a_failed_workers_last_log_lines_say_why() -> None:
    pods = [
        pod("bad-worker-0", "Failed", terminated=(2, "Error", "")),
        pod("bad-worker-1"),
    ]
    assert failed_containers(pods) == [("bad-worker-0", "worker")]
    body = job("bad", phase="Failed")
    body["status"]["conditions"] = [cond("Failed", "True", "FailurePolicyRule", "exit code 2")]
    log = "usage: gaudi3-train [-h]\ngaudi3-train: error: argument --lr: invalid float value: 'x'\n"
    workers = explain(body, pods, [], NOW, {"bad-worker-0": log}).findings[-1]
    assert workers.title == "Workers that failed"
    assert workers.detail.splitlines() == [
        "bad-worker-0: worker exit code 2, Error",
        "  │ usage: gaudi3-train [-h]",
        "  │ gaudi3-train: error: argument --lr: invalid float value: 'x'",
    ]


def test_events_of_an_earlier_job_of_the_same_name_are_left_out() -> None:
    body = job()
    body["metadata"]["uid"] = "new"
    mine = event("GaudiTrainingJob/tiny", "Running", "all 2 workers are running", 60, "Normal")
    mine["involvedObject"]["uid"] = "new"
    theirs = event("GaudiTrainingJob/tiny", "FailurePolicyRule", "job failed", 700)
    theirs["involvedObject"]["uid"] = "old"
    old_pod = event("Pod/tiny-worker-0", "BackOff", "restarting", 650)  # before creation
    new_pod = event("Pod/tiny-worker-0", "Started", "started", 30, "Normal")
    assert own_events(body, [mine, theirs, old_pod, new_pod]) == [mine, new_pod]


def test_a_running_job_with_a_refused_worker_is_not_called_fine() -> None:
    body = job()
    body["status"]["conditions"] = [
        cond("InvalidSpec", "True", "PodRejected", "pods is forbidden: exceeded quota: hpus")
    ]
    e = explain(body, [pod("tiny-worker-0")], [], NOW)
    assert not e.ok
    assert e.summary == (
        "gtj/tiny is Running (2/2 workers ready), but: "
        "the API server refused a worker pod built from this spec."
    )
