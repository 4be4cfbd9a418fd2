"""CPU model, int8-relevant flags, the int8 format they call for, and mismatch warnings."""

from metakd_cli.core.cpu import cpu_info, int8_target, target_mismatch

VNNI = "model name\t: AMD EPYC 9B14\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
AVX2 = "model name\t: Intel(R) Xeon(R) CPU E5-2690 v4\nflags\t\t: fpu sse avx2 fma\n"


def test_cpu_info_reads_model_and_flags():
    info = cpu_info(VNNI, "x86_64")
    assert info.model == "AMD EPYC 9B14"
    assert info.flags == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_info(AVX2, "x86_64").flags == ["avx2", "fma"]


def test_int8_target():
    assert int8_target(cpu_info(VNNI, "x86_64"))[0] == "avx512_vnni"
    assert int8_target(cpu_info(AVX2, "x86_64"))[0] == "avx2"
    assert int8_target(cpu_info("", "aarch64"))[0] == "arm64"


def test_target_mismatch_warns_only_when_the_feature_is_missing():
    assert target_mismatch("avx512_vnni", cpu_info(VNNI, "x86_64")) is None
    assert "lacks avx512_vnni" in target_mismatch("avx512_vnni", cpu_info(AVX2, "x86_64"))
    assert target_mismatch("avx2", cpu_info(AVX2, "x86_64")) is None
    assert "arm64" in target_mismatch("arm64", cpu_info(AVX2, "x86_64"))
    assert target_mismatch(None, cpu_info(AVX2, "x86_64")) is None
