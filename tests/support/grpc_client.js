// A grpc-js client for the gRPC tests: unary and bidirectional calls with raw bytes
// (no .proto needed), printing one JSON line with what it got.
// usage: node grpc_client.js HOST:PORT SERVICE
const grpc = require("@grpc/grpc-js");

const [target, service] = process.argv.slice(2);
const raw = { serialize: (b) => b, deserialize: (b) => b };
const Client = grpc.makeGenericClientConstructor({
  Unary: { path: `/${service}/Unary`, requestStream: false, responseStream: false,
           requestSerialize: raw.serialize, requestDeserialize: raw.deserialize,
           responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
  Bidi: { path: `/${service}/Bidi`, requestStream: true, responseStream: true,
          requestSerialize: raw.serialize, requestDeserialize: raw.deserialize,
          responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
});
const client = new Client(target, grpc.credentials.createInsecure());
const deadline = () => new Date(Date.now() + 10000);
const out = {};

client.Unary(Buffer.from("from-js"), { deadline: deadline() }, (err, reply) => {
  out.unary = err ? `error ${err.code}` : reply.toString();
  client.Unary(Buffer.from("fail"), { deadline: deadline() }, (err2) => {
    out.fail = err2 ? { code: err2.code, details: err2.details } : null;
    const call = client.Bidi({ deadline: deadline() });
    const got = [];
    call.on("data", (b) => got.push(b.toString()));
    call.on("error", (e) => { out.bidi = `error ${e.code}`; done(); });
    call.on("end", () => { out.bidi = got; done(); });
    for (const word of ["a", "bb", "ccc"]) call.write(Buffer.from(word));
    call.end();
  });
});

function done() {
  console.log(JSON.stringify(out));
  client.close();
}
