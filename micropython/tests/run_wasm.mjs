// Runs micropython/umqttsn.py and tests/test_logic.py under real MicroPython
// (the WebAssembly port from npm). Exit status 0 only when every test passed.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const here = dirname(fileURLToPath(import.meta.url));
let out = "";
const mp = await loadMicroPython({ stdout: (s) => { out += s + "\n"; process.stdout.write(s + "\n"); } });
mp.FS.writeFile("/umqttsn.py", readFileSync(join(here, "..", "umqttsn.py")));
mp.FS.writeFile("/test_logic.py", readFileSync(join(here, "test_logic.py")));
try {
  mp.runPython("import sys\nsys.path.append('/')\nimport test_logic\ntest_logic.run()\nprint(sys.implementation.name)");
} catch (e) {
  console.error("MicroPython raised:", e.message ?? e);
  process.exit(1);
}
process.exit(out.includes("OK ") && out.includes("micropython") ? 0 : 1);
