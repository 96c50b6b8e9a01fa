// Writes a Brotli (.br, quality 11) and a gzip (.gz, level 9) copy beside
// every text file of the build worth compressing, once, at build time: the
// gateway serves them as they are, so no request pays for compression and
// every client gets the smallest encoding it takes. Node's zlib writes the
// same bytes for the same input and version (gzip's header time is 0).
//   node scripts/compress.mjs [dist directory]

import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const COMPRESSIBLE = /\.(js|css|html|svg|json)$/;
/** Below this, the headers cost more than the encoding saves. */
const MIN_BYTES = 1024;

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

const dist = process.argv[2] ?? "dist";
for (const path of files(dist)) {
  if (!COMPRESSIBLE.test(path)) continue;
  const bytes = readFileSync(path);
  if (bytes.length < MIN_BYTES) continue;
  const brotli = brotliCompressSync(bytes, {
    params: {
      [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
      [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
    },
  });
  const gzip = gzipSync(bytes, { level: 9 });
  writeFileSync(`${path}.br`, brotli);
  writeFileSync(`${path}.gz`, gzip);
  console.log(`${path}: ${bytes.length} B, br ${brotli.length} B, gzip ${gzip.length} B`);
}
