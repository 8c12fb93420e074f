public enum HVNNPlaceholder {}
