"""One LibreOffice conversion worker: runs under the system Python that has `uno` (python3-uno).

Started (inside a sandbox) by docqa.inputs.converters, never imported by docqa itself. It starts one
headless soffice with a private profile, listening on a named pipe (no TCP port), and then converts
one document per request line on stdin, answering one JSON line on stdout:

    request  {"in": "/stage/in/3/document.docx", "out": "/stage/out/3.pdf", "filter": null, "options": null}
    answer   {"ok": true} | {"ok": false, "error": "..."}

Documents are loaded hidden, read-only, with macros never executed and links never updated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import uno  # only in the system Python (python3-uno)
from com.sun.star.beans import PropertyValue

NEVER_EXECUTE = 0  # com.sun.star.document.MacroExecMode.NEVER_EXECUTE
NO_UPDATE = 0  # com.sun.star.document.UpdateDocMode.NO_UPDATE

# The PDF export filter for each kind of document LibreOffice opened.
EXPORT_FILTERS = (
    ("com.sun.star.text.WebDocument", "writer_web_pdf_Export"),
    ("com.sun.star.text.GenericTextDocument", "writer_pdf_Export"),
    ("com.sun.star.sheet.SpreadsheetDocument", "calc_pdf_Export"),
    ("com.sun.star.presentation.PresentationDocument", "impress_pdf_Export"),
    ("com.sun.star.drawing.DrawingDocument", "draw_pdf_Export"),
)

# Set in the private profile before soffice first starts: macros off at the highest security level,
# no update checks, no remote links followed, no locking files next to documents.
PROFILE_SETTINGS = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>3</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="DisableMacrosExecution" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Security/Scripting"><prop oor:name="BlockUntrustedRefererLinks" oor:op="fuse"><value>true</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="UseLocking" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="ShowTipOfTheDay" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Common/Misc"><prop oor:name="FirstRun" oor:op="fuse"><value>false</value></prop></item>
<item oor:path="/org.openoffice.Office.Writer/Content/Update"><prop oor:name="Link" oor:op="fuse"><value>2</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Content/Update"><prop oor:name="Link" oor:op="fuse"><value>2</value></prop></item>
<item oor:path="/org.openoffice.Office.Jobs/Jobs/org.openoffice.Office.Jobs:Job['UpdateCheck']/Arguments"><prop oor:name="AutoCheckEnabled" oor:op="fuse"><value>false</value></prop></item>
</oor:items>
"""


def prop(name: str, value: object) -> PropertyValue:
    item = PropertyValue()
    item.Name = name
    item.Value = value
    return item


def write_profile(profile: str) -> None:
    user = os.path.join(profile, "user")
    os.makedirs(user, exist_ok=True)
    settings = os.path.join(user, "registrymodifications.xcu")
    if not os.path.exists(settings):
        with open(settings, "w", encoding="utf-8") as handle:
            handle.write(PROFILE_SETTINGS)


def start_office(soffice: str, profile: str, pipe: str) -> tuple[subprocess.Popen, Any]:
    write_profile(profile)
    office = subprocess.Popen(
        [
            soffice,
            "--headless",
            "--invisible",
            "--nologo",
            "--norestore",
            "--nodefault",
            "--nolockcheck",
            f"-env:UserInstallation={uno.systemPathToFileUrl(profile)}",
            f"--accept=pipe,name={pipe};urp;StarOffice.ComponentContext",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    local = uno.getComponentContext()
    resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
    deadline = time.monotonic() + 120
    while True:
        try:
            context = resolver.resolve(f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext")
            break
        except Exception:  # NoConnectException until soffice listens
            if office.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soffice did not start (exit {office.poll()})") from None
            time.sleep(0.1)
    desktop = context.ServiceManager.createInstanceWithContext("com.sun.star.frame.Desktop", context)
    return office, desktop


def convert(desktop: Any, source: str, target: str, import_filter: str | None, options_text: str | None) -> None:
    options = [
        prop("Hidden", True),
        prop("ReadOnly", True),
        prop("MacroExecutionMode", NEVER_EXECUTE),
        prop("UpdateDocMode", NO_UPDATE),
        prop("Silent", True),
    ]
    if import_filter:
        options.append(prop("FilterName", import_filter))
    if options_text:
        options.append(prop("FilterOptions", options_text))
    document = desktop.loadComponentFromURL(uno.systemPathToFileUrl(source), "_blank", 0, tuple(options))
    if document is None:
        raise RuntimeError("LibreOffice could not open it (damaged, or a type it does not read)")
    try:
        export = next((name for service, name in EXPORT_FILTERS if document.supportsService(service)), None)
        if export is None:
            raise RuntimeError("LibreOffice opened it but cannot export it as PDF")
        document.storeToURL(uno.systemPathToFileUrl(target), (prop("FilterName", export),))
    finally:
        document.close(True)


def main() -> None:
    soffice, profile, pipe = sys.argv[1:4]
    office, desktop = start_office(soffice, profile, pipe)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                convert(desktop, request["in"], request["out"], request.get("filter"), request.get("options"))
                answer: dict = {"ok": True}
            except Exception as error:  # a UNO error: report it and take the next document
                message = getattr(error, "Message", "") or str(error) or type(error).__name__
                answer = {"ok": False, "error": " ".join(message.split())[:300]}
            print(json.dumps(answer), flush=True)
    finally:
        try:
            desktop.terminate()
        except Exception:
            pass
        office.kill()


if __name__ == "__main__":
    main()
