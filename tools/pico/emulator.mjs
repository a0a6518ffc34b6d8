// An emulated Raspberry Pi Pico: rp2040js (npm, pinned in tools/pico/package.json) running the rp2 port's
// firmware image as a board does, with what rp2040js leaves out and a board has:
//   flash      littlefs on the chip's real flash driver: the ROM's flash functions are done here on the
//              flash array (rp2040js models no SPI flash behind the SSI), written through to a file, so the
//              board keeps its state across resets and restarts; erase and program take the time a W25Q16
//              flash takes (typical: 45 ms a sector, 0.8 ms a page), with interrupts off, as on the chip.
//   power cut  at a chosen flash operation, which may be left half done ("torn"); the board stays off
//              until it is powered on again.
//   time       instructions take their cycles at 125 MHz; waits take wall time (see run() below), so the
//              chip's clock runs behind the wall clock only by the code it ran since its last wait.
//   idle       while the core waits (WFI/WFE) the host CPU sleeps until the next timer or byte.
//   UART0      a PL011 as MicroPython's driver expects it: TX and RX FIFOs of 32 paced at the programmed
//              baud rate, the TX interrupt on draining past the trigger level, the RX level and
//              receive-timeout (IRQ_RXIDLE) interrupts; host bytes are fed only while the RX FIFO has
//              room (RTS/CTS flow control).
//   USB CDC    the REPL; an OUT transfer is held until the host has bytes to send (rp2040js answers at
//              once with an empty packet, which keeps the core busy forever).
//   entropy    the ring oscillator's random bit (os.urandom, mbed TLS) from the host's CSPRNG; the
//              temperature sensor reads a room at ~24 C.
//   reset      the watchdog (machine.reset(), WDT) reboots the chip; the watchdog's reason and scratch
//              registers survive it, the RAM and the RTC do not.
//   info block 0x40070000 (nothing there on a real RP2040): 0x00/0x04 cycles executed (low word latches
//              the high), 0x08 "EMU1", 0x0c sectors erased, 0x10 pages programmed, 0x14 boots.
//
// File descriptors: 0 commands in, 1 events out (one JSON object a line each), 2 log lines,
// --usb FD the USB CDC serial port (a socket), --uart0 FD UART0 (a socket; optional).
// Commands: {"cut": {"after": N, "torn": bool}} arms a power cut at the N-th flash operation from now;
// {"power": "off" | "on" | "cycle"}; {"stats": 1}; {"quit": 1}. Events: {"event": "boot", "boots": n},
// {"event": "cut", ...}, {"event": "reset", "why": ...}, {"stats": {...}}, {"event": "exit"}.
// End of input on fd 0, SIGTERM or SIGINT: a clean exit (status 0).
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { webcrypto as crypto } from 'node:crypto';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
for (const need of ['rp2040js', 'bootrom', 'flash']) {
  if (!args[need]) {
    process.stderr.write(`pico: --${need} is required\n`);
    process.exit(2);
  }
}
const rp = await import(pathToFileURL(path.join(args.rp2040js, 'dist/esm/index.js')).href);

const FLASH_SIZE = Number(args['flash-size'] || 2 * 1024 * 1024);
const SECTOR = 4096;
const PAGE = 256;
// W25Q16JV typical figures (datasheet tSE, tPP); "none" makes flash operations instant.
const ERASE_NS = args['flash-timing'] === 'none' ? 0 : 45e6;
const PROGRAM_NS = args['flash-timing'] === 'none' ? 0 : 0.8e6;
const NS_PER_CYCLE = 8; // 125 MHz
const INFO_BASE = 0x40070;
const ROM_HOOKS = ['IF', 'EX', 'FC', 'CX']; // connect, exit XIP, flush cache, enter XIP: nothing to do here

function log(msg) {
  process.stderr.write(`pico: ${msg}\n`);
}
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// --- flash: an image in memory, written through to the file ---
const bootrom = new Uint32Array(new Uint8Array(fs.readFileSync(args.bootrom)).buffer);
if (bootrom.length !== 4096) {
  log(`${args.bootrom} is not a 16 KB RP2040 bootrom`);
  process.exit(2);
}
const chipFlash = new Uint8Array(Math.max(16 * 1024 * 1024, FLASH_SIZE)).fill(0xff);
const flash = chipFlash.subarray(0, FLASH_SIZE);
let flashFd;
if (fs.existsSync(args.flash)) {
  const image = fs.readFileSync(args.flash);
  if (image.length !== FLASH_SIZE) {
    log(`${args.flash} is ${image.length} bytes, not a ${FLASH_SIZE}-byte flash image`);
    process.exit(2);
  }
  flash.set(image);
  flashFd = fs.openSync(args.flash, 'r+');
} else {
  flashFd = fs.openSync(args.flash, 'w+');
  fs.writeSync(flashFd, flash, 0, FLASH_SIZE, 0);
}
if (args.firmware) { // as a UF2 drop does: the sectors the image covers, nothing else
  const fw = fs.readFileSync(args.firmware);
  const end = Math.ceil(fw.length / SECTOR) * SECTOR;
  if (end > FLASH_SIZE) {
    log(`${args.firmware} does not fit the flash`);
    process.exit(2);
  }
  flash.fill(0xff, 0, end);
  flash.set(fw, 0);
  fs.writeSync(flashFd, flash, 0, end, 0);
}
function persist(start, end) {
  fs.writeSync(flashFd, flash, start, end - start, start);
}

const stats = {
  boots: 0, cycles: 0, waitNs: 0, sectorsErased: 0, pagesProgrammed: 0, bytesProgrammed: 0,
  flashOps: 0, maxSectorErases: 0,
};
const sectorErases = new Uint32Array(FLASH_SIZE / SECTOR);
let cut = null; // {left, torn}

// --- the chip ---
let mcu = null;
let powered = false;
let stallUntil = 0; // emulated ns: the core is stalled in a flash operation until then
let wallStart = 0; // ms, performance.now() at power-on
let pendingReset = null;
let resetAt = null;
let timer = null;
let scheduled = false;

// A PL011 as MicroPython's rp2 driver uses it.
const UARTDR = 0x0, UARTFR = 0x18, UARTIFLS = 0x34, UARTIMSC = 0x38, UARTRIS = 0x3c, UARTMIS = 0x40,
  UARTICR = 0x44;
const RXIM = 1 << 4, TXIM = 1 << 5, RTIM = 1 << 6;
const LEVELS = [4, 8, 16, 24, 28];

function makeUart(chip, base) {
  const uart = chip.uart[0];
  const clock = chip.clock;
  const tx = [];
  const rx = [];
  let ifls = 0x12; // reset value: both at 1/2
  let txBusy = false;
  let hostRx = []; // bytes from the host not yet in the RX FIFO (arrays of Buffers)
  let hostRxBytes = 0;
  let feeding = false;
  const byteNs = () => {
    const baud = uart.baudRate || 115200;
    return Math.max(1, Math.round(10 * 1e9 / (isFinite(baud) && baud > 0 ? baud : 115200)));
  };
  const txLevel = () => LEVELS[Math.min(ifls & 7, 4)];
  const rxLevel = () => LEVELS[Math.min((ifls >> 3) & 7, 4)];
  let ris = 0;
  const update = () => chip.setInterrupt(uart.irq, !!(ris & uart.interruptMask));
  const txAlarm = clock.createAlarm(() => {
    const before = tx.length;
    const b = tx.shift();
    base.sendUart(b);
    if (before > txLevel() && tx.length <= txLevel()) {
      ris |= TXIM;
      update();
    }
    if (tx.length) {
      txAlarm.schedule(byteNs());
    } else {
      txBusy = false;
    }
  });
  const rtAlarm = clock.createAlarm(() => {
    if (rx.length) {
      ris |= RTIM;
      update();
    }
  });
  const feedAlarm = clock.createAlarm(() => {
    feeding = false;
    feed();
  });
  function takeHostByte() {
    const head = hostRx[0];
    const b = head[head.pos++];
    if (head.pos >= head.length) hostRx.shift();
    hostRxBytes--;
    return b;
  }
  function feed() { // one byte per byte time, while the FIFO has room
    if (feeding || !hostRxBytes || rx.length >= 32 || !uart.enabled) return;
    feeding = true;
    feedAlarm.schedule(byteNs());
    rx.push(takeHostByte());
    if (rx.length >= rxLevel()) ris |= RXIM;
    rtAlarm.schedule(32 * byteNs() / 10);
    update();
  }
  uart.readUint32 = function (offset) {
    switch (offset) {
      case UARTDR: {
        const v = rx.length ? rx.shift() : 0;
        if (rx.length < rxLevel()) ris &= ~RXIM;
        if (!rx.length) ris &= ~RTIM;
        update();
        feed();
        return v;
      }
      case UARTFR:
        return (tx.length === 0 ? 1 << 7 : 0) | (rx.length >= 32 ? 1 << 6 : 0) | (tx.length >= 32 ? 1 << 5 : 0)
          | (rx.length === 0 ? 1 << 4 : 0) | (txBusy ? 1 << 3 : 0);
      case UARTIFLS:
        return ifls;
      case UARTRIS:
        return ris;
      case UARTMIS:
        return ris & uart.interruptMask;
      default:
        return Object.getPrototypeOf(uart).readUint32.call(uart, offset);
    }
  };
  uart.writeUint32 = function (offset, value) {
    switch (offset) {
      case UARTDR:
        if (tx.length < 32) tx.push(value & 0xff);
        if (tx.length > txLevel()) ris &= ~TXIM;
        if (!txBusy) {
          txBusy = true;
          txAlarm.schedule(byteNs());
        }
        update();
        return;
      case UARTIFLS:
        ifls = value & 0x3f;
        return;
      case UARTIMSC:
        uart.interruptMask = value & 0x7ff;
        update();
        return;
      case UARTICR:
        ris &= ~uart.rawWriteValue;
        update();
        return;
      default:
        Object.getPrototypeOf(uart).writeUint32.call(uart, offset, value);
        if (offset === 0x30) feed(); // UARTCR: enabled now
    }
  };
  uart.checkInterrupts = update;
  return {
    fromHost(buf) {
      buf.pos = 0;
      hostRx.push(buf);
      hostRxBytes += buf.length;
      feed();
    },
  };
}

// The ring oscillator's RANDOMBIT is what os.urandom() and mbed TLS's entropy read on the rp2 port (ROSC is
// unimplemented in rp2040js: an all-ones register would give every board the same "random" bytes). Here it
// is a bit from the host's CSPRNG; the other registers read as a running, stable oscillator.
function roscBlock(chip) {
  const p = new rp.BasePeripheral(chip, 'ROSC');
  const pool = new Uint8Array(256);
  let bits = 0;
  let at = pool.length;
  p.readUint32 = (offset) => {
    if (offset === 0x1c) { // RANDOMBIT
      if (bits === 0) {
        if (at >= pool.length) {
          crypto.getRandomValues(pool);
          at = 0;
        }
        bits = pool[at++] | 0x100;
      }
      const bit = bits & 1;
      bits >>>= 1;
      if (bits === 1) bits = 0;
      return bit;
    }
    if (offset === 0x18) return 0x80001000; // STATUS: stable, enabled
    return offset === 0x00 ? 0xfab000 : 0; // CTRL: enabled, medium range
  };
  p.writeUint32 = () => {};
  return p;
}

// The RP2040's temperature sensor (ADC input 4): 0.706 V at 27 C, -1.721 mV per degree; a room at ~24 C with
// a few LSB of noise, as a real ADC reads.
function temperatureSensor(chip) {
  const adc = chip.adc;
  const mv = (c) => 706 - (c - 27) * 1.721;
  adc.channelValues[4] = Math.round(mv(24) / 3300 * 4095);
  const read = adc.onADCRead;
  adc.onADCRead = (channel) => {
    if (channel === 4) {
      const noise = (crypto.getRandomValues(new Uint8Array(1))[0] % 5) - 2;
      adc.channelValues[4] = Math.round(mv(24) / 3300 * 4095) + noise;
    }
    read.call(adc, channel);
  };
}

function infoBlock(chip) {
  let hi = 0;
  const p = new rp.BasePeripheral(chip, 'UPYHUB_INFO');
  p.readUint32 = (offset) => {
    const total = stats.cycles + chip.core.cycles;
    switch (offset) {
      case 0x00:
        hi = Math.floor(total / 0x100000000);
        return total % 0x100000000;
      case 0x04:
        return hi;
      case 0x08:
        return 0x31554d45; // "EMU1"
      case 0x0c:
        return stats.sectorsErased >>> 0;
      case 0x10:
        return stats.pagesProgrammed >>> 0;
      case 0x14:
        return stats.boots;
      default:
        return 0;
    }
  };
  p.writeUint32 = () => {};
  return p;
}

function romTable() {
  const rom8 = new Uint8Array(bootrom.buffer);
  const r16 = (a) => rom8[a] | (rom8[a + 1] << 8);
  const funcs = {};
  for (let p = r16(0x14); r16(p); p += 4) {
    const code = r16(p);
    funcs[String.fromCharCode(code & 0xff, code >> 8)] = r16(p + 2);
  }
  return funcs;
}
const ROM = romTable();

// One flash operation, or the power cut armed for it. Returns false when the power went.
function flashOp(kind, offset, count, src) {
  stats.flashOps++;
  let torn = false;
  if (cut && --cut.left <= 0) {
    torn = cut.torn;
    if (!torn) {
      emit({ event: 'cut', op: kind, offset, count, torn: false, ops: stats.flashOps });
      cut = null;
      return false;
    }
  }
  const n = torn ? Math.floor(count / 2) : count;
  if (kind === 'erase') {
    flash.fill(0xff, offset, offset + n);
    for (let s = Math.floor(offset / SECTOR); s < Math.ceil((offset + count) / SECTOR); s++) {
      const e = ++sectorErases[s];
      if (e > stats.maxSectorErases) stats.maxSectorErases = e;
      stats.sectorsErased++;
    }
    stallUntil = mcu.clock.nanos + ERASE_NS * Math.ceil(count / SECTOR);
  } else {
    for (let i = 0; i < n; i++) flash[offset + i] &= src[i];
    stats.pagesProgrammed += Math.ceil(count / PAGE);
    stats.bytesProgrammed += count;
    stallUntil = mcu.clock.nanos + PROGRAM_NS * Math.ceil(count / PAGE);
  }
  persist(offset, offset + Math.max(n, 1));
  if (torn) {
    emit({ event: 'cut', op: kind, offset, count, torn: true, ops: stats.flashOps });
    cut = null;
    return false;
  }
  return true;
}

let cdcQueue = []; // Buffers from the host for the USB CDC
let uartHost = null; // the UART0 model's host side
let replSock = null;
let uartSock = null;

function hookRom(chip) {
  const core = chip.core;
  const hooks = new Array(0x2000);
  const ret = () => {
    core.PC = core.LR & ~1;
  };
  for (const name of ROM_HOOKS) hooks[ROM[name] >> 1] = ret;
  hooks[ROM.RE >> 1] = () => {
    const r = core.registers;
    if (flashOp('erase', r[0] & 0xffffff, r[1])) ret();
    else powerOff('cut');
  };
  hooks[ROM.RP >> 1] = () => {
    const r = core.registers;
    const src = r[1] - 0x20000000;
    if (flashOp('program', r[0] & 0xffffff, r[2], chip.sram.subarray(src, src + r[2]))) ret();
    else powerOff('cut');
  };
  return hooks;
}

let hooks = null;
let cdc = null;
let heldRead = null; // the CDC OUT transfer waiting for host bytes

function cdcPump() {
  if (heldRead === null || !cdcQueue.length || !cdc) return;
  const want = heldRead;
  const out = [];
  while (out.length < want && cdcQueue.length) {
    const head = cdcQueue[0];
    const take = Math.min(want - out.length, head.length - head.pos);
    for (let i = 0; i < take; i++) out.push(head[head.pos + i]);
    head.pos += take;
    if (head.pos >= head.length) cdcQueue.shift();
  }
  heldRead = null;
  mcu.usbCtrl.endpointReadDone(cdc.outEndpoint, new Uint8Array(out));
  if (replSock && replSock.isPaused() && queued() < 4096) replSock.resume();
}
function queued() {
  let n = 0;
  for (const b of cdcQueue) n += b.length - b.pos;
  return n;
}

function powerOn(why) {
  const old = mcu;
  mcu = new rp.RP2040();
  mcu.logger = new rp.ConsoleLogger(rp.LogLevel.Error);
  mcu.loadBootrom(bootrom);
  // The chip reads and writes its own array; flashOp writes ours: make them one.
  flashView(mcu);
  if (old && why === 'watchdog') {
    const wd = mcu.peripherals[0x40058];
    const oldWd = old.peripherals[0x40058];
    wd.reason = oldWd.reason;
    wd.scratchData.set(oldWd.scratchData);
  }
  mcu.peripherals[INFO_BASE] = infoBlock(mcu);
  mcu.peripherals[0x40060] = roscBlock(mcu);
  temperatureSensor(mcu);
  const wd = mcu.peripherals[0x40058];
  wd.onWatchdogTrigger = () => {
    pendingReset = 'watchdog';
    resetAt = { pc: mcu.core.PC >>> 0, lr: mcu.core.LR >>> 0 }; // where the code was: for the event
    wd.alarm.enable = false; // it would fire again at once, forever: the reset ends it
  };
  hooks = hookRom(mcu);
  uartHost = makeUart(mcu, { sendUart: (b) => uartSock && uartSock.write(Buffer.of(b)) });
  cdc = new rp.USBCDC(mcu.usbCtrl);
  heldRead = null;
  cdc.onSerialData = (buf) => {
    if (replSock && replSock.writableLength < 4 << 20) replSock.write(Buffer.from(buf));
  };
  mcu.usbCtrl.onEndpointRead = (endpoint, size) => {
    if (endpoint === cdc.outEndpoint) {
      heldRead = size;
      cdcPump();
    }
  };
  mcu.core.PC = 0x10000000; // boot2 in place (XIP needs no set-up here), then the image's vector table
  stallUntil = 0;
  wallStart = performance.now();
  lastWall = 0;
  powered = true;
  stats.boots++;
  emit({ event: 'boot', boots: stats.boots, why });
  kick();
}

// rp2040js keeps a 16 MB flash array of its own: let the chip use one whose first FLASH_SIZE bytes are ours,
// so XIP reads see every erase and program.
function flashView(chip) {
  chip.flash = chipFlash;
  chip.flash16 = new Uint16Array(chipFlash.buffer);
  chip.flashView = new DataView(chipFlash.buffer);
}

function powerOff(why) {
  if (!powered) return;
  stats.cycles += mcu.core.cycles;
  mcu.core.cycles = 0;
  powered = false;
  emit({ event: 'off', why });
}

const wallNs = () => (performance.now() - wallStart) * 1e6;

function kick() {
  if (timer) {
    clearTimeout(timer);
    timer = null;
  }
  if (!scheduled) {
    scheduled = true;
    setImmediate(run);
  }
}

// Time, as the chip sees it: instructions advance the clock by their cycles (125 MHz), so code takes the time it
// takes on a real chip whatever the host's speed; while the core waits (WFI/WFE, or stalled in a flash
// operation) the clock follows the wall clock, and where it fell behind during code it catches up at up to
// CATCH_UP times the wall clock's rate, never passing it. So on-chip deadlines, watchdogs and the UART's baud
// rate keep their proportions to the code, the hub's answers take their wall time, and the chip's clock
// (and the time it took from NTP) stays within the last stretch of code of real time.
const CATCH_UP = 2;
let lastWall = 0;
const idle = (core, clock) => core.waiting || clock.nanos < stallUntil;

function run() {
  scheduled = false;
  timer = null;
  if (!powered) return;
  const core = mcu.core;
  const clock = mcu.clock;
  const sliceEnd = performance.now() + 15;
  for (let i = 1; ; i++) {
    if (pendingReset) {
      const why = pendingReset;
      pendingReset = null;
      powerOff(why);
      emit(Object.assign({ event: 'reset', why }, resetAt || {}));
      resetAt = null;
      powerOn(why);
      return;
    }
    if (!powered) return;
    if (idle(core, clock)) {
      const now = wallNs();
      const until = Math.min(now, clock.nanos + (now - lastWall) * CATCH_UP);
      lastWall = now;
      for (let n = 0; idle(core, clock) && clock.nanos < until; n++) { // alarm by alarm: one may wake the core
        let step = until - clock.nanos;
        const next = clock.nanosToNextAlarm;
        if (next > 0 && next < step) step = next;
        if (clock.nanos < stallUntil && stallUntil - clock.nanos < step) step = stallUntil - clock.nanos;
        const before = clock.nanos;
        clock.tick(step);
        if (core.waiting) stats.waitNs += clock.nanos - before;
        if (n > 100000) {
          log('timer storm: more than 100000 timer events in one wait');
          break;
        }
      }
      if (idle(core, clock)) {
        let wait = clock.nanosToNextAlarm;
        if (clock.nanos < stallUntil) wait = wait ? Math.min(wait, stallUntil - clock.nanos) : stallUntil - clock.nanos;
        if (wait <= 0) wait = 50e6; // nothing due: sleep until a byte arrives (or 50 ms)
        if (now > clock.nanos) wait /= CATCH_UP;
        timer = setTimeout(run, Math.max(1, Math.min(50, wait / 1e6)));
        return;
      }
      continue;
    }
    const pc = core.PC;
    if (pc < 0x4000) {
      const hook = hooks[pc >> 1];
      if (hook) {
        hook();
        if (!powered) return;
        continue;
      }
    }
    clock.tick(core.executeInstruction() * NS_PER_CYCLE);
    if ((i & 1023) === 0) {
      lastWall = wallNs(); // wall time spent running code is not time the clock may catch up
      if (performance.now() > sliceEnd) break;
    }
  }
  scheduled = true;
  setImmediate(run);
}

// --- the host side ---
function socketOn(fd, onData) {
  try {
    const s = new net.Socket({ fd, readable: true, writable: true });
    s.on('data', onData);
    s.on('error', () => {});
    s.on('end', () => {});
    return s;
  } catch (e) {
    return null;
  }
}

replSock = args.usb === undefined ? null : socketOn(Number(args.usb), (buf) => {
  buf.pos = 0;
  cdcQueue.push(buf);
  if (queued() > 65536) replSock.pause(); // the host types faster than the board reads
  cdcPump();
  kick();
});
if (args.uart0 !== undefined) {
  uartSock = socketOn(Number(args.uart0), (buf) => {
    if (uartHost) uartHost.fromHost(buf);
    kick();
  });
}

function stop(code) {
  powerOff('exit');
  try {
    fs.fsyncSync(flashFd);
    fs.closeSync(flashFd);
  } catch (e) {
    // already closed
  }
  emit({ event: 'exit' });
  process.exit(code);
}
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));

let cmdBuf = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  cmdBuf += chunk;
  let nl;
  while ((nl = cmdBuf.indexOf('\n')) >= 0) {
    const line = cmdBuf.slice(0, nl).trim();
    cmdBuf = cmdBuf.slice(nl + 1);
    if (!line) continue;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      log(`not a command: ${line.slice(0, 80)}`);
      continue;
    }
    command(cmd);
  }
});
process.stdin.on('end', () => stop(0));

function command(cmd) {
  if (cmd.cut) {
    cut = { left: Math.max(1, cmd.cut.after | 0), torn: !!cmd.cut.torn };
  } else if (cmd.power === 'off') {
    powerOff('power');
  } else if (cmd.power === 'on') {
    if (!powered) powerOn('power');
  } else if (cmd.power === 'cycle') {
    powerOff('power');
    powerOn('power');
  } else if (cmd.stats) {
    const cycles = stats.cycles + (powered ? mcu.core.cycles : 0);
    emit({ stats: Object.assign({}, stats, { cycles, powered, armed: cut ? cut.left : 0 }) });
  } else if (cmd.quit) {
    stop(0);
  }
}

powerOn('power');
