"""Clock unset: a board whose RTC was never set (it reads 2000-01-01 at boot) and whose NTP servers do
not answer must not mint a token (it would be expired or absurd), must not connect, and keeps
asking for the time with backoff.

The RTC stand-in: a tiny LD_PRELOAD library, compiled here, that makes the unix port's wall clock
(gettimeofday/time) start at 2000-01-01 when the process starts; monotonic time is untouched."""
import subprocess

import pytest

from upyhub import sim


pytestmark = pytest.mark.slow

RTC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <sys/time.h>
#include <time.h>

static int (*real_gettimeofday)(struct timeval *, void *);
static time_t booted;

int gettimeofday(struct timeval *tv, void *tz) {
    if (!real_gettimeofday) {
        struct timeval now;
        real_gettimeofday = dlsym(RTLD_NEXT, "gettimeofday");
        real_gettimeofday(&now, NULL);
        booted = now.tv_sec;
    }
    int r = real_gettimeofday(tv, tz);
    tv->tv_sec = tv->tv_sec - booted + 946684800; /* seconds since boot, from 2000-01-01 */
    return r;
}

time_t time(time_t *t) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (t) *t = tv.tv_sec;
    return tv.tv_sec;
}
"""


@pytest.fixture(scope="module")
def unset_rtc(tmp_path_factory):
    d = tmp_path_factory.mktemp("rtc")
    (d / "rtc.c").write_text(RTC)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(d / "rtc.so"), str(d / "rtc.c"), "-ldl"], check=True)
    return str(d / "rtc.so")


def test_stand_in_clock_reads_2000(run_mp, unset_rtc):
    p = run_mp("import time\nfrom iothub import clock\nprint(time.gmtime()[0], clock.is_set())",
               env={"LD_PRELOAD": unset_rtc})
    assert p.stdout.split() == ["2000", "False"], p.stderr


def test_unset_clock_no_token_no_connection(hub, tmp_path, device, unset_rtc, monkeypatch):  # noqa: F811
    key = hub.add_device("clock-1")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="clock-1", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=1)
    (flash / ".sim").mkdir()
    (flash / ".sim" / "clock-unset").write_text("")  # and NTP does not answer
    monkeypatch.setenv("LD_PRELOAD", unset_rtc)
    dev = device(flash)
    monkeypatch.delenv("LD_PRELOAD")
    dev.wait_for(r"main: clock: no answer from pool.ntp.org")
    dev.wait_for(r"iothub: cannot mint a token: clock is not set")
    dev.wait_for(r"iothub: setting the clock failed: no answer from pool.ntp.org", count=3)
    found = dev.wait_for(r"iothub: retry in (\d+) ms \(attempt (\d+)\)", count=3)
    assert [int(m.group(2)) for m in found][:3] == [1, 2, 3]
    dev.wait_for(r"app: telemetry 3 queued")  # the app goes on; readings wait in the queue
    assert "connected" not in dev.log()
    assert "clock-1" not in hub.log().replace("device clock-1 written", "")  # never reached the hub
