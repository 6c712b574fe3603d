/** The usage of call i in the outbox tests' app processes (the tests sum the same function). */
export const usageOf = (i: number) => ({ promptTokens: 10 + (i % 17), completionTokens: 1 + (i % 5) })
