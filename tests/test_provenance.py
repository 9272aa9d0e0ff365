"""meta.json's provenance names the CPU model and ATen's CPU capability (rounding differs between CPUs)."""

from torchfpe.lab.provenance import cpu_capability, describe, provenance


def test_provenance_records_the_cpu_and_its_capability():
    made = provenance()
    assert made["cpu"] and made["cpu"] in made["device"]
    assert made["cpu_capability"] == cpu_capability() and made["cpu_capability"]
    line = describe(made)
    assert f"ATen CPU capability {made['cpu_capability']}" in line


def test_describe_reads_folders_from_before_the_capability_was_recorded():
    old = {k: v for k, v in provenance().items() if k not in ("cpu", "cpu_capability")}
    assert "capability" not in describe(old)
