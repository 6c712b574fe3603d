/**
 * @since 0.1.0
 */
export * as BillingCycle from "./BillingCycle.js"

/**
 * @since 0.1.0
 */
export * as Budget from "./Budget.js"

/**
 * @since 0.1.0
 */
export * as CallbackConfig from "./CallbackConfig.js"

/**
 * @since 0.1.0
 */
export * as CallbackMetrics from "./CallbackMetrics.js"

/**
 * @since 0.1.0
 */
export * as CallContext from "./CallContext.js"
export * as Callbacks from "./Callbacks.js"

/**
 * @since 0.1.0
 */
export * as Cost from "./Cost.js"

/**
 * @since 0.1.0
 */
export * as Dispatcher from "./Dispatcher.js"

/**
 * @since 0.1.0
 */
export * as Events from "./Events.js"

/**
 * @since 0.1.0
 */
export * as Handler from "./Handler.js"

/**
 * @since 0.1.0
 */
export * as HandlerError from "./HandlerError.js"

/**
 * @since 0.3.0
 */
export * as Outbox from "./Outbox.js"

/**
 * @since 0.3.0
 */
export * as SemanticConventions from "./SemanticConventions.js"

/**
 * @since 0.1.0
 */
export * as Testing from "./Testing.js"

/**
 * @since 0.3.0
 */
export * as TokenCounter from "./TokenCounter.js"

/**
 * @since 0.1.0
 */
export * as TokenStore from "./TokenStore.js"
