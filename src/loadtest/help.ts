// `bulwark bench --help`: every flag, its default and an example. Kept apart from the code
// so the usage reads as one page.

import { DEFAULTS } from './options.ts'

export const BENCH_HELP = `usage: bulwark bench --model NAME [options]

Load-tests a running Bulwark through its public API (OIP v2 REST or gRPC) and prints, for each
load step, requests/s, items/s, p50/p90/p95/p99 latency and the errors by their stable code.

target
  --url URL              the gateway (default ${DEFAULTS.url}, what npm start serves);
                         with --protocol grpc its gRPC listener's HOST:PORT (default
                         ${DEFAULTS.grpcUrl}; http://HOST:PORT for a listener without TLS)
  --model NAME           the model to load (required); --model-version V for one version
  --cacert FILE          CA bundle that signed the gateway's certificate
  --cert FILE --key FILE client certificate and key (mTLS)
  --token T | --token-file FILE | --token-command 'CMD'
                         the bearer token, or a file or a command that prints it (one token
                         a line: each line a caller, see --callers)
                         (none of these, a loopback URL and a development set-up in
                         .bulwark/dev/: its CA, client certificate, and a token minted from its key)
  --callers N            spread the requests over N identities in turn (default 1): with the
                         development set-up, N tokens with distinct subjects, new for each run;
                         with --token-file or --token-command, their first N lines. Per-caller
                         limits (privacy budget, rate limit) otherwise measure one caller's
                         quota, not the gateway (the bench says so when they dominate a step)
  --protocol rest|grpc   the API to load (default rest); grpc: inference.GRPCInferenceService,
                         the model's inputs read with ModelMetadata
  --allow-target HOST    load a host that is not loopback; it must name the URL's host exactly
                         (without it, the bench refuses anything but 127.0.0.0/8, ::1, localhost)

inputs
  (default)              generated from the model's metadata (GET /v2/models/NAME, or
                         ModelMetadata over gRPC): every input's datatype and shape, values
                         drawn from a seeded generator
  --range LOW:HIGH       the values generated inputs are drawn from (default: an input's range
                         where the metadata gives one, else 0:1)
  --seed N               seed of the generator (default ${DEFAULTS.seed}); the same seed, the same bodies
  --batch N              items per request: the batch dimension of generated inputs (default 1)
  --input FILE|DIR       an OIP v2 JSON request file, or a raw tensor file (.bin, .raw: the
                         model's one input, little-endian, the batch read from its length), or
                         a folder of them, sent in turn
  --binary               send tensors with the binary tensor extension (and ask for binary outputs);
                         over gRPC as raw_input_contents (without it: typed contents)

load (each level is one step: warm-up, then measurement)
  --concurrency LIST     closed loop: N clients each sending back to back; a list 1,4,16,64 or
                         a range 1:64:x2 (doubling) or 8:64:8 (adding 8); default 1
  --rate LIST            open loop: requests/s offered, whatever the latency (same syntax)
  --connections N        connections for --rate (default ${DEFAULTS.connections})
  --warmup DURATION      answers dropped at the start of each step (default ${DEFAULTS.warmupMs}ms)
  --duration DURATION    measure each step for this long; without it, measure windows until
                         three in a row agree within --stability-percent (as perf_analyzer)
  --window DURATION      one measurement window (default ${DEFAULTS.windowMs}ms)
  --stability-percent P  how close three windows' req/s and mean latency must be (default ${DEFAULTS.stabilityPercent})
  --max-windows N        windows before a step is reported as not stable (default ${DEFAULTS.maxWindows})
  --max-duration DURATION  the whole run's time bound (default ${DEFAULTS.maxDurationMs / 60_000}m)
  --max-requests N       the whole run's request bound (default ${DEFAULTS.maxRequests})
  durations take a unit: 500ms, 5s, 2m

where the time goes
  --metrics URL          the gateway's admin /metrics (e.g. http://127.0.0.1:9464/metrics): its
                         per-link histograms are diffed over each step, giving each defence's
                         mean time per request and share of the server's time

output
  --csv FILE             one row per step
  --json FILE            everything, per step (latency histogram and per-link times included)
  --report FILE.html     one self-contained HTML page with the charts (no network needed), and
                         FILE.csv and FILE.json beside it unless --csv or --json say otherwise
  --quiet                no progress line and no notes on stderr (the progress line is only
                         drawn when stderr is a terminal)

examples (against npm start, from the repository folder):
  npx bulwark bench --model mnist --callers 16 --concurrency 1,16,64 --duration 5s \\
      --metrics http://127.0.0.1:9464/metrics --csv r.csv --json r.json --report r.html
  npx bulwark bench --protocol grpc --model ocr-cls --binary --range=-1:1 --concurrency 1,16,64

exit status: 0 the run completed (errors in answers are results, shown per code),
1 it could not run (target refused, unreachable, unreadable inputs), 2 bad flags
`
