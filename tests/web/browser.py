#!/usr/bin/env python3
"""Headless Chromium for the dashboard tests, driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: commands on fd 3, replies on
fd 4, each a JSON message ended by a NUL byte): no driver, no library.

Reads one JSON command per line on stdin and answers one JSON line each:
  {"go": URL}                      open URL, answer once it has loaded
  {"eval": EXPR}                   the expression's value (promises awaited)
  {"wait": EXPR, "timeout": S}     poll until EXPR is truthy (its value)
  {"click": SELECTOR}              click the element (a form's button posts it),
                                   just after answering (a click that leaves
                                   the page would end the evaluation)
  {"screenshot": PATH, "width": W, "height": H}
Answers {"ok": VALUE} or {"error": TEXT}. Ends at end of input.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"


class Browser:
    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="conveyor-chromium-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def as_fds_3_and_4():
            # Fresh copies first: either end may already be fd 3 or 4.
            reads, writes = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--no-first-run", "--hide-scrollbars",
             "--user-data-dir=" + self.profile, "--window-size=1280,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def call(self, method, params=None, session=False):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True},
            session=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details.get("text", "exception"))
        return result["result"].get("value")

    def wait(self, expression, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None  # a page between loads
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"not true within {timeout}s: {expression}")
            time.sleep(0.05)

    def go(self, url):
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait(f"location.href.startsWith({json.dumps(url.split('#')[0])}) && "
                  "document.readyState === 'complete'", 20)

    def click(self, selector):
        found = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; setTimeout(() => e.click(), 0); return true; })()")
        if not found:
            raise RuntimeError(f"nothing matches {selector}")
        return True

    def screenshot(self, path, width, height):
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700},
            session=True)
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    browser = Browser()
    try:
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if "go" in command:
                    value = browser.go(command["go"])
                elif "eval" in command:
                    value = browser.evaluate(command["eval"])
                elif "wait" in command:
                    value = browser.wait(command["wait"], command.get("timeout", 10))
                elif "click" in command:
                    value = browser.click(command["click"])
                elif "screenshot" in command:
                    value = browser.screenshot(command["screenshot"], command.get("width", 1280),
                                               command.get("height", 900))
                else:
                    raise RuntimeError(f"unknown command {command}")
                answer = {"ok": value}
            except RuntimeError as e:
                answer = {"error": str(e)}
            print(json.dumps(answer), flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
