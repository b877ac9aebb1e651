// CommonJS, synchronous.
exports.run = (parameters) => parameters;
