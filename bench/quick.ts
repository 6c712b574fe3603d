import * as dispatch from "./dispatch.js"
const kinds = (process.argv[2] ?? "suspend,fail").split(",") as any
dispatch.run({ rounds: Number(process.argv[3] ?? 3), kinds }).then((rows) => console.table(rows))
